"""The data of `nerbatch view` from the output's parts: one streamed pass and the sample's rows.

One pass, batch by batch, over five columns of the parts (`source`, `doc_id`, `label`, `text`,
`score`), a few parts at a time on threads: exact counts and score histograms per label, a table
of frequent entities (exact up to `max_distinct` distinct texts, then pruned per label:
approximate, and the page says so), and the sample: a seeded random key per document (a run of
rows of one document), the `sample` smallest kept. Then the rows of the sampled documents only
(their row groups). Memory stays flat whatever the output's size.

It does not read the inputs or the rejects (view_inputs.py) and writes no HTML (view_page.py). A
part that cannot be read is reported in `Scan.errors`, never a crash.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .output import OutputDir
from .page import Highlight

SCAN_COLUMNS = ["source", "doc_id", "label", "text", "score"]
ROW_COLUMNS = ["source", "doc_id", "start", "end", "label", "text", "score"]
HISTOGRAM_BINS = 10
# What reading a damaged or foreign Parquet file raises: the page reports it, the view goes on.
UNREADABLE = (OSError, pa.ArrowException, KeyError, ValueError)


@dataclass
class ViewOptions:
    """What the page shows (the CLI's options) and the bounds that keep it cheap."""

    sample: int = 50  # documents in the sample
    seed: int = 0  # the same seed, output and filters give the same sample
    labels: tuple[str, ...] = ()  # sample documents with an entity of these labels (all if empty)
    min_score: float = 0.0  # ... with an entity scoring at least this
    query: str | None = None  # ... with an entity whose text contains this (case-insensitive)
    inputs: tuple[str, ...] = ()  # where the inputs are now, if they moved since the run
    top: int = 20  # frequent entities per label
    max_distinct: int = 1_000_000  # distinct (label, text) kept exactly before pruning
    long_document: int = 3000  # characters; longer documents are shown around their entities
    context: int = 160  # characters on each side of an entity in a long document
    budget: int = 6000  # characters shown of one long document at most


@dataclass
class SampledDoc:
    """A document of the sample: a run of consecutive rows of one (source, doc_id) in a part."""

    key: float
    part: int  # index in the manifest's parts
    row: int  # first row of the run in that part
    source: str
    doc_id: str
    spans: list[Highlight] = field(default_factory=list)
    text: str | None = None
    order: tuple[int, int] = (1 << 62, 0)  # (input index, position in it), for display
    note: str | None = None  # why the text is not shown


@dataclass
class Scan:
    """What one pass over the parts found."""

    rows: int = 0
    label_counts: dict = field(default_factory=dict)
    label_score_sums: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)  # label -> counts per score bin
    frequent: dict = field(default_factory=dict)  # label -> [(text, count, mean score)]
    distinct: int = 0
    approximate: bool = False
    documents: int = 0  # runs of rows of one document: documents with at least one entity
    matching: int = 0  # ... with an entity that passes the filters
    sample: list[SampledDoc] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # parts that could not be read


# --- reading the output --------------------------------------------------------------------------


def open_part(out: OutputDir, name: str, dictionaries: Sequence[str] = ()) -> pq.ParquetFile:
    """A part (or rejects file) of the output; `dictionaries`: columns to read dictionary-encoded
    (labels and sources repeat: comparing and hashing their indices is cheaper than strings)."""
    source = (
        out.local / name
        if out.local is not None
        else out.remote.filesystem.open_input_file(out.remote.child(name).path)
    )
    return pq.ParquetFile(source, read_dictionary=list(dictionaries) or None)


class _Frequent:
    """Counts and score sums of (label, text), merged in Arrow; pruned to the most frequent per
    label when more than `bound` distinct pairs pile up (then counts are lower bounds)."""

    def __init__(self, bound: int, keep: int):
        self.bound, self.keep = bound, keep
        self.merged: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.approximate = False

    def add(self, batch: pa.RecordBatch) -> None:
        """The spans of a batch."""
        table = pa.Table.from_batches([batch]).select(["label", "text", "score"])
        partial = table.group_by(["label", "text"], use_threads=False).aggregate(
            [("score", "sum"), ([], "count_all")]
        )
        # Each batch has its own dictionaries: plain strings from here on, to merge them.
        for i, name in enumerate(("label", "text")):
            if pa.types.is_dictionary(partial.column(name).type):
                partial = partial.set_column(i, name, partial.column(name).cast(pa.string()))
        self.add_counts(partial.rename_columns(["label", "text", "sum", "n"]))

    def add_counts(self, counts: pa.Table) -> None:
        """Counts made elsewhere (columns label, text, sum, n), e.g. another `table()`."""
        self.pending.append(counts)
        self.pending_rows += counts.num_rows
        if self.pending_rows > self.bound:
            self._merge()

    def table(self) -> pa.Table | None:
        """All the counts so far, merged (label, text, sum, n)."""
        self._merge()
        return self.merged

    def _merge(self) -> None:
        tables = ([self.merged] if self.merged is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        if not tables:
            return
        merged = (
            pa.concat_tables(tables)
            .group_by(["label", "text"], use_threads=False)
            .aggregate([("sum", "sum"), ("n", "sum")])
            .rename_columns(["label", "text", "sum", "n"])
        )
        if merged.num_rows > self.bound:
            # Keep the most frequent texts of each label, half the bound in all: a text dropped
            # here and seen again starts from 0, so from now on counts are lower bounds.
            self.approximate = True
            labels = merged.column("label").unique().to_pylist()
            keep = max(self.keep, self.bound // (2 * len(labels)))
            merged = pa.concat_tables(_top(merged, label, keep) for label in labels)
        self.merged = merged

    def result(self, top: int) -> tuple[dict, int]:
        self._merge()
        if self.merged is None:
            return {}, 0
        found = {}
        for label in self.merged.column("label").unique().to_pylist():
            best = _top(self.merged, label, top)
            found[label] = [
                (text, n, s / n if n else math.nan)
                for text, n, s in zip(
                    best.column("text").to_pylist(),
                    best.column("n").to_pylist(),
                    best.column("sum").to_pylist(),
                    strict=True,
                )
            ]
        return found, self.merged.num_rows


def _top(table: pa.Table, label, n: int) -> pa.Table:
    mask = pc.is_null(table.column("label")) if label is None else pc.equal(table["label"], label)
    return table.filter(mask).sort_by([("n", "descending"), ("text", "ascending")]).slice(0, n)


def _run_starts(batch: pa.RecordBatch, previous: tuple | None) -> np.ndarray:
    """Indices of the rows where a new document starts (a change of source or doc_id), the first
    row too unless it continues `previous`, the (source, doc_id) of the row before."""
    source, doc_id = batch.column("source"), batch.column("doc_id")
    n = batch.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_dictionary(source.type):
        source = source.indices  # one dictionary per batch: equal indices, equal sources
    changed = pc.fill_null(
        pc.or_(pc.not_equal(source[1:], source[:-1]), pc.not_equal(doc_id[1:], doc_id[:-1])),
        True,
    )
    starts = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1
    first = (batch.column("source")[0].as_py(), doc_id[0].as_py())
    if previous != first:
        starts = np.concatenate([[0], starts])
    return starts.astype(np.int64)


def _matching_rows(batch: pa.RecordBatch, options: ViewOptions) -> np.ndarray | None:
    """Rows that pass the sample filters (None: no filter, every row does)."""
    masks = []
    if options.labels:
        masks.append(pc.is_in(batch.column("label"), pa.array(list(options.labels))))
    if options.min_score > 0:
        # In float32, the column's type: 0.9 as float32 is below 0.9 as a double.
        threshold = pa.scalar(options.min_score, pa.float32())
        masks.append(pc.greater_equal(batch.column("score"), threshold))
    if options.query:
        text = batch.column("text")
        if pa.types.is_dictionary(text.type):  # match each distinct text once
            found = pc.match_substring(text.dictionary, options.query, ignore_case=True)
            masks.append(pc.take(found, text.indices))
        else:
            masks.append(pc.match_substring(text, options.query, ignore_case=True))
    if not masks:
        return None
    mask = masks[0]
    for more in masks[1:]:
        mask = pc.and_(mask, more)
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


class _LabelStats:
    """Exact spans, score sums and score histograms per label, from each batch's label
    dictionary (a few labels: numpy counts per dictionary index, merged by name)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.score_sums: dict[str, float] = {}
        self.histograms: dict[str, np.ndarray] = {}

    def add(self, labels: pa.DictionaryArray, scores: pa.Array) -> None:
        names = labels.dictionary.to_pylist()
        codes = labels.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.bincount(codes, minlength=len(names))
        values = scores.to_numpy(zero_copy_only=False)  # float32; NaN where null
        if scores.null_count or np.isnan(values).any():
            valid = ~np.isnan(values)
            codes, values = codes[valid], values[valid]
        sums = np.bincount(codes, weights=values, minlength=len(names))
        bins = np.clip((values * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        # (labels, bins) counts in one bincount over label * bins + bin
        hist = np.bincount(
            codes * HISTOGRAM_BINS + bins, minlength=len(names) * HISTOGRAM_BINS
        ).reshape(len(names), HISTOGRAM_BINS)
        for i, label in enumerate(names):
            if counts[i]:
                self.counts[label] = self.counts.get(label, 0) + int(counts[i])
                self.score_sums[label] = self.score_sums.get(label, 0.0) + float(sums[i])
                if label not in self.histograms:
                    self.histograms[label] = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
                self.histograms[label] += hist[i]

    def merge(self, other: _LabelStats) -> None:
        for label, count in other.counts.items():
            self.counts[label] = self.counts.get(label, 0) + count
            self.score_sums[label] = self.score_sums.get(label, 0.0) + other.score_sums[label]
            if label not in self.histograms:
                self.histograms[label] = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
            self.histograms[label] += other.histograms[label]


class _Sampler:
    """A seeded random key per document (a run of rows of one source and doc_id), drawn in
    stream order, and the documents with the smallest keys among those that match the filters
    (bottom-k sampling: memory for 2 x `size` candidates, whatever the output's size)."""

    def __init__(self, size: int, seed: int | tuple[int, ...], options: ViewOptions):
        self.size, self.options = size, options
        self.rng = np.random.default_rng(seed)
        self.keep = 2 * size  # room for documents whose rows come in more than one run
        self.candidates: list[tuple[float, int, int, str, str]] = []
        self.threshold = math.inf
        self.matching = 0

    def add(self, batch: pa.RecordBatch, starts: np.ndarray, part: int, offset: int) -> None:
        """The runs of a batch that start at `starts` (row `offset` of the part `part`)."""
        if self.size == 0 or not len(starts):
            return
        # A key for every document, filtered or not: the same seed draws the same keys, so a
        # narrower filter keeps the documents of the wider one that match it.
        keys = self.rng.random(len(starts))
        matching = _matching_rows(batch, self.options)
        if matching is None:
            runs = np.arange(len(starts))
        else:
            # The run of each matching row. A row before the first start belongs to a run that
            # began in the previous batch, whose key was drawn there: such a run is sampled only
            # if it matched there too (at most one run per batch; harmless for a sample).
            runs = np.searchsorted(starts, matching, side="right") - 1
            runs = np.unique(runs[runs >= 0])
        self.matching += len(runs)
        chosen = runs[keys[runs] < self.threshold]
        if not len(chosen):
            return
        rows = pa.array(starts[chosen])
        sources = batch.column("source").take(rows).to_pylist()
        ids = batch.column("doc_id").take(rows).to_pylist()
        for run, source, doc_id in zip(chosen, sources, ids, strict=True):
            self.candidates.append(
                (float(keys[run]), part, offset + int(starts[run]), source, doc_id)
            )
        self._prune()

    def _prune(self) -> None:
        if len(self.candidates) > 2 * self.keep:
            self.candidates.sort()
            del self.candidates[self.keep :]
            self.threshold = self.candidates[-1][0]

    def merge(self, other: _Sampler) -> None:
        """The candidates of another sampler (of another part)."""
        self.candidates += other.candidates
        self.matching += other.matching
        self._prune()

    def result(self) -> list[SampledDoc]:
        sample: list[SampledDoc] = []
        seen = set()
        for key, part, row, source, doc_id in sorted(self.candidates):
            if (source, doc_id) not in seen and len(sample) < self.size:
                seen.add((source, doc_id))
                sample.append(SampledDoc(key, part, row, source, doc_id))
        return sample


@dataclass
class _PartScan:
    """What the pass found in one part."""

    rows: int
    documents: int
    stats: _LabelStats
    frequent: pa.Table | None
    approximate: bool
    sampler: _Sampler
    error: str | None = None  # the part could not be read (to its end)


def _scan_part(out: OutputDir, name: str, part_index: int, options: ViewOptions) -> _PartScan:
    stats = _LabelStats()
    frequent = _Frequent(options.max_distinct, keep=options.top * 50)
    # A random stream per part, from the seed and the part's index: the same keys whatever the
    # order in which the parts are scanned.
    sampler = _Sampler(options.sample, (options.seed, part_index), options)
    rows = documents = 0
    previous = None  # (source, doc_id) of the row before the batch
    offset = 0  # of the batch in the part
    error = None
    try:
        parquet = open_part(out, name, dictionaries=("source", "label", "text"))
        for batch in parquet.iter_batches(batch_size=65536, columns=SCAN_COLUMNS):
            if batch.num_rows == 0:
                continue
            if batch.column("label").null_count:  # a damaged output: those rows count as ""
                labels = pc.fill_null(batch.column("label").dictionary_decode(), "")
                batch = batch.set_column(2, "label", labels.dictionary_encode())
            stats.add(batch.column("label"), batch.column("score"))
            frequent.add(batch)
            starts = _run_starts(batch, previous)
            documents += len(starts)
            sampler.add(batch, starts, part_index, offset)
            last = batch.num_rows - 1
            previous = (batch.column("source")[last].as_py(), batch.column("doc_id")[last].as_py())
            offset += batch.num_rows
            rows += batch.num_rows
    except UNREADABLE as e:
        error = f"part {name} is unreadable after {rows:,} rows ({e}); the rest is not counted"
    return _PartScan(rows, documents, stats, frequent.table(), frequent.approximate, sampler, error)


def scan(out: OutputDir, parts: Sequence[str], options: ViewOptions, threads: int = 0) -> Scan:
    """One pass over `SCAN_COLUMNS` of the parts, batch by batch, `threads` parts at a time (0:
    one per core, at most 4). Memory: a batch per thread, the bounded frequent table and the
    sample's candidates; the result does not depend on the number of threads."""
    from concurrent.futures import ThreadPoolExecutor

    result = Scan()
    stats = _LabelStats()
    frequent = _Frequent(options.max_distinct, keep=options.top * 50)
    sampler = _Sampler(options.sample, options.seed, options)
    threads = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # A window of parts in flight, merged in part order: memory stays bounded.
        pending: list = []
        names = iter(enumerate(parts))
        for index, name in itertools.islice(names, threads + 1):
            pending.append(pool.submit(_scan_part, out, name, index, options))
        while pending:
            part = pending.pop(0).result()
            for index, name in itertools.islice(names, 1):
                pending.append(pool.submit(_scan_part, out, name, index, options))
            result.rows += part.rows
            result.documents += part.documents
            if part.error:
                result.errors.append(part.error)
            stats.merge(part.stats)
            if part.frequent is not None:
                frequent.add_counts(part.frequent)
            frequent.approximate |= part.approximate
            sampler.merge(part.sampler)
    result.label_counts = stats.counts
    result.label_score_sums = stats.score_sums
    result.histograms = stats.histograms
    result.frequent, result.distinct = frequent.result(options.top)
    result.approximate = frequent.approximate
    result.matching = sampler.matching
    result.sample = sampler.result()
    return result


def read_sample_rows(
    out: OutputDir, parts: Sequence[str], sample: Sequence[SampledDoc]
) -> list[str]:
    """Fill each sampled document's spans: the run of rows from its first row on, read from the
    row groups that hold it (and the next ones while the run continues). Returns the problems
    (a part that cannot be read again)."""
    problems = []
    by_part: dict[int, list[SampledDoc]] = {}
    for doc in sample:
        by_part.setdefault(doc.part, []).append(doc)
    for part_index, docs in by_part.items():
        try:
            _read_runs(open_part(out, parts[part_index]), docs)
        except UNREADABLE as e:  # the scan read these rows; reading them again failed
            problems.append(
                f"the rows of {len(docs)} sampled documents in {parts[part_index]} "
                f"are unreadable ({e})"
            )
    return problems


def _read_runs(parquet: pq.ParquetFile, docs: list[SampledDoc]) -> None:
    """The spans of each document of `docs` (of this part): its run of rows."""
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    cache: dict[int, pa.Table] = {}  # row groups of the documents at hand

    def group(i: int) -> pa.Table:
        if i not in cache:
            cache[i] = parquet.read_row_group(i, columns=ROW_COLUMNS)
        return cache[i]

    for doc in sorted(docs, key=lambda d: d.row):
        index = bisect.bisect_right(bounds, doc.row) - 1
        at = doc.row - bounds[index]
        for done in [i for i in cache if i < index]:  # documents come in row order
            del cache[done]
        while index < len(sizes):
            rows = group(index).slice(at)
            same = pc.and_(
                pc.equal(rows.column("source"), doc.source),
                pc.equal(rows.column("doc_id"), doc.doc_id),
            )
            same = pc.fill_null(same, False).to_numpy(zero_copy_only=False)
            length = len(same) if same.all() else int(np.argmin(same))
            for start, end, label, text, score in zip(
                *(rows.column(c).slice(0, length).to_pylist() for c in ROW_COLUMNS[2:]),
                strict=True,
            ):
                doc.spans.append(
                    Highlight(
                        start if start is not None else -1,
                        end if end is not None else -1,
                        label if label is not None else "",
                        score,
                        text,
                    )
                )
            if length < len(same):
                break
            index, at = index + 1, 0
