"""`nerbatch view`: an annotate output as one HTML page that a person reads.

The page (page.py builds it; one self-contained file) shows the run (counts, rejects and their
reasons, spans per label, speed, bundle, options: from `_manifest.json` and `_rejects/`), the most
frequent entities per label, and a seeded sample of documents with every entity highlighted,
with filters by label, minimum score and text that run in the page.

What it reads, so that a 1 GB output takes seconds and flat memory:
- the manifest (the counts come from it, and the list of committed parts);
- one streamed pass, batch by batch, over five columns of the parts (`source`, `doc_id`,
  `label`, `text`, `score`): exact counts and score histograms per label, a table of frequent
  entities (exact up to `max_distinct` distinct texts, then pruned per label: approximate, and
  the page says so), and the sample: a seeded random key per document (a run of rows of one
  document), the `sample` smallest kept;
- the rows of the sampled documents only (their row groups);
- the input files that hold the sampled documents, re-read with annotate's readers and the read
  options the manifest records, each only up to its last sampled document. So the offsets point
  into exactly the characters annotate tagged; each span's recorded text is checked against them.

It does not tag, score or change the output. A missing or changed input, a document not found
in its input, and spans that cannot be drawn (out of range, overlapping, not matching the text)
are listed on the page, never a crash.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .errors import NerbatchError, OutputError
from .output import MANIFEST, REJECTS, SUCCESS, OutputDir, read_manifest
from .page import BIDI_CONTROLS, Highlight, Labels, bar, check_spans, esc, highlight, page, table
from .page import windows as context_windows
from .readers import InputFile, ReadOptions, Reject, expand_inputs, printable, read_file
from .storage import is_uri, open_remote

SCAN_COLUMNS = ["source", "doc_id", "label", "text", "score"]
ROW_COLUMNS = ["source", "doc_id", "start", "end", "label", "text", "score"]
HISTOGRAM_BINS = 10
MAX_PROBLEMS_SHOWN = 200


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


def _open_part(out: OutputDir, name: str, dictionaries: Sequence[str] = ()) -> pq.ParquetFile:
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


# What reading a damaged or foreign Parquet file raises: the page reports it, the view goes on.
_UNREADABLE = (OSError, pa.ArrowException, KeyError, ValueError)


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
        parquet = _open_part(out, name, dictionaries=("source", "label", "text"))
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
    except _UNREADABLE as e:
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
            _read_runs(_open_part(out, parts[part_index]), docs)
        except _UNREADABLE as e:  # the scan read these rows; reading them again failed
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


# --- re-reading the texts ------------------------------------------------------------------------


@dataclass
class InputStatus:
    """Where a recorded input is now, and what the page says about it."""

    recorded: dict | None
    file: InputFile | None = None
    note: str | None = None  # missing, moved, changed
    problem: bool = False


def _path_parts(path: str) -> list[str]:
    return [p for p in re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", path).split("/") if p]


def _common_suffix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def locate_inputs(
    manifest: dict, sources: Sequence[str], overrides: Sequence[str]
) -> dict[str, InputStatus]:
    """For each `source` (of the sampled documents): the input file to re-read, found at its
    recorded path or, with `overrides`, among those files by the longest common path suffix."""
    recorded = {}
    for index, item in enumerate(manifest.get("inputs", [])):
        # `source` holds the readers' printable form of the path
        recorded.setdefault(printable(item["path"]), (index, item))
    moved: list[InputFile] = []
    if overrides:
        try:
            moved = [f for f in expand_inputs(list(overrides))[0] if not f.error]
        except NerbatchError as e:
            moved = []
            override_error = str(e)
        else:
            override_error = None
    found: dict[str, InputStatus] = {}
    for source in sources:
        if source not in recorded:
            found[source] = InputStatus(
                None, note="not among the inputs the manifest records", problem=True
            )
            continue
        index, item = recorded[source]
        status = InputStatus(dict(item, index=index))
        found[source] = status
        if overrides:
            if override_error:
                status.note, status.problem = f"--inputs: {override_error}", True
                continue
            wanted = _path_parts(item["path"])
            scored = sorted(
                ((_common_suffix(wanted, _path_parts(f.path)), f) for f in moved),
                key=lambda pair: -pair[0],
            )
            if not scored or scored[0][0] == 0:
                status.note = "missing: no file of that name under --inputs"
                status.problem = True
                continue
            if len(scored) > 1 and scored[1][0] == scored[0][0]:
                status.note = (
                    f"ambiguous under --inputs ({scored[0][1].display}, {scored[1][1].display}, "
                    "...): the first is used"
                )
                status.problem = True
            file = scored[0][1]
            status.note = status.note or f"moved: read from {file.display}"
        else:
            try:
                files = expand_inputs([item["path"]])[0]
            except NerbatchError as e:
                status.note, status.problem = f"missing: {e}", True
                continue
            file = files[0]
        if file.error:
            status.note, status.problem = f"unreadable: {file.error}", True
            continue
        if file.remote is None and 0 <= item.get("size", -1) <= file.size:
            # Read what annotate read: a file appended to since is cut at its recorded size.
            if file.size != item["size"] or file.mtime != item.get("mtime"):
                status.note = (status.note + "; " if status.note else "") + (
                    f"changed since the run (size {item['size']} -> {file.size} bytes, or its "
                    "mtime): highlights are checked against the recorded span texts"
                )
                status.problem = True
            file = dataclasses.replace(file, size=item["size"])
        elif file.remote is None and file.size != item.get("size"):
            status.note = (status.note + "; " if status.note else "") + (
                f"changed since the run (size {item.get('size')} -> {file.size} bytes, smaller): "
                "highlights are checked against the recorded span texts"
            )
            status.problem = True
        status.file = file
    return found


def _read_options(manifest: dict) -> ReadOptions:
    recorded = manifest.get("settings", {}).get("read", {})
    known = {f.name for f in dataclasses.fields(ReadOptions)}
    return ReadOptions(**{k: v for k, v in recorded.items() if k in known})


def _moved_id(doc_id: str, old: str, new: str) -> str:
    """A default id (`<file>` or `<file>:<n>`) of an input that moved from `old` to `new`."""
    if old == new:
        return doc_id
    if doc_id == old:
        return new
    rest = doc_id[len(old) :]
    if doc_id.startswith(old) and rest[:1] == ":" and rest[1:].isdigit():
        return new + rest
    return doc_id


def read_texts(
    manifest: dict, sample: Sequence[SampledDoc], overrides: Sequence[str]
) -> dict[str, InputStatus]:
    """Set `text` (or `note`) on every sampled document, re-reading each input that holds one
    up to its last sampled document. Returns the status of those inputs."""
    by_source: dict[str, list[SampledDoc]] = {}
    for doc in sample:
        by_source.setdefault(doc.source, []).append(doc)
    statuses = locate_inputs(manifest, list(by_source), overrides)
    options = _read_options(manifest)
    order = sorted(by_source, key=lambda s: (statuses[s].recorded or {}).get("index", 1 << 62))
    for source in order:
        status, docs = statuses[source], by_source[source]
        if status.file is None:
            for doc in docs:
                doc.note = f"input {status.note}"
            continue
        wanted: dict[str, list[SampledDoc]] = {}
        for doc in docs:
            wanted.setdefault(_moved_id(doc.doc_id, source, status.file.display), []).append(doc)
        unreadable = None
        position = 0
        try:
            for item in read_file(status.file, options):
                position += 1
                if isinstance(item, Reject):
                    if item.doc_id is None:
                        unreadable = item.reason
                    continue
                waiting = wanted.pop(item.doc_id, None)
                for doc in waiting or ():
                    doc.text = item.text
                    doc.order = (status.recorded["index"], position)
                if not wanted:
                    break  # the rest of the file holds no sampled document
        except NerbatchError as e:  # e.g. a Parquet input without the text column
            unreadable = str(e)
        for docs_left in wanted.values():
            for doc in docs_left:
                doc.note = f"not found in {status.file.display}" + (
                    f" ({unreadable})" if unreadable else " (did the input change?)"
                )
    return statuses


# --- rejects -------------------------------------------------------------------------------------


def reject_summary(out: OutputDir, manifest: dict) -> tuple[list[tuple], int, list[str]]:
    """([(reason with numbers as N, count, example source, doc_id, line, reason)], rows,
    problems), most frequent first, from the `_rejects/` files the manifest names (one per part:
    at most a part's documents each, so each is read whole)."""
    kinds: dict[str, list] = {}
    rows = 0
    problems: list[str] = []
    files = [p["rejects_file"] for p in manifest.get("parts", []) if p.get("rejects_file")]
    for name in files:
        if not out.exists(name):
            problems.append(f"{name} is named in the manifest but missing from the output")
            continue
        try:
            table = _open_part(out, name).read(columns=["source", "doc_id", "line", "reason"])
        except _UNREADABLE as e:
            problems.append(f"{name} is unreadable ({e})")
            continue
        rows += table.num_rows
        kind = pc.replace_substring_regex(pc.fill_null(table["reason"], ""), r"\d+", "N")
        grouped = (
            table.append_column("kind", kind)
            .group_by("kind", use_threads=False)
            .aggregate(
                [
                    ([], "count_all"),
                    ("source", "first"),
                    ("doc_id", "first"),
                    ("line", "first"),
                    ("reason", "first"),
                ]
            )
        )
        for record in grouped.to_pylist():
            entry = kinds.setdefault(
                record["kind"],
                [
                    record["kind"],
                    0,
                    record["source_first"],
                    record["doc_id_first"],
                    record["line_first"],
                    record["reason_first"],
                ],
            )
            entry[1] += record["count_all"]
    ordered = sorted((tuple(v) for v in kinds.values()), key=lambda v: (-v[1], v[0]))
    return ordered, rows, problems


# --- the page ------------------------------------------------------------------------------------

SCRIPT = """(function () {
  "use strict";
  var boxes = Array.prototype.slice.call(document.querySelectorAll("input.lab"));
  var min = document.getElementById("min");
  var minValue = document.getElementById("min-value");
  var query = document.getElementById("q");
  var status = document.getElementById("status");
  var docs = Array.prototype.slice.call(document.querySelectorAll("article.doc"));
  var lower = new Map();
  function apply() {
    var on = {}, narrowed = false;
    boxes.forEach(function (b) {
      if (b.checked) { on[b.value] = true; } else { narrowed = true; }
    });
    var least = parseFloat(min.value) || 0;
    if (least > 0) { narrowed = true; }
    minValue.textContent = least.toFixed(2);
    var needle = query.value.trim().toLowerCase();
    var shownDocs = 0, shownEntities = 0;
    docs.forEach(function (doc) {
      var count = 0;
      doc.querySelectorAll("mark.e").forEach(function (e) {
        var visible = on[e.dataset.label] === true && parseFloat(e.dataset.score) >= least;
        e.classList.toggle("off", !visible);
        e.classList.toggle("hit", visible && needle !== "" &&
          e.textContent.toLowerCase().indexOf(needle) >= 0);
        if (visible) { count += 1; }
      });
      if (!lower.has(doc)) { lower.set(doc, doc.textContent.toLowerCase()); }
      var found = needle === "" || lower.get(doc).indexOf(needle) >= 0;
      var shown = found && (count > 0 || !narrowed);
      doc.classList.toggle("hidden", !shown);
      if (shown) { shownDocs += 1; shownEntities += count; }
    });
    status.textContent = "showing " + shownDocs + " of " + docs.length + " documents, " +
      shownEntities + " entities";
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.has("label")) {
      var wanted = params.get("label").split(",");
      boxes.forEach(function (b) { b.checked = wanted.indexOf(b.value) >= 0; });
    }
    if (params.has("min")) { min.value = params.get("min"); }
    if (params.has("q")) { query.value = params.get("q"); }
    apply();
  }
  boxes.forEach(function (b) { b.addEventListener("change", apply); });
  min.addEventListener("input", apply);
  query.addEventListener("input", apply);
  document.getElementById("all").addEventListener("click", function () {
    boxes.forEach(function (b) { b.checked = true; });
    apply();
  });
  document.getElementById("none").addEventListener("click", function () {
    boxes.forEach(function (b) { b.checked = false; });
    apply();
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""

VIEW_STYLE = """
.controls{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:center;position:sticky;top:0;
background:#fff;padding:8px 0;border-bottom:1px solid var(--line);z-index:1}
.controls label{white-space:nowrap;cursor:pointer}
.controls input[type=search]{font:inherit;padding:2px 6px;width:220px}
.controls button{font:inherit;font-size:12px;padding:1px 8px}
#status{color:var(--muted);font-size:13px}
article.doc{border-top:1px solid var(--line);padding:10px 0 12px}
article.doc.hidden{display:none}
.dh{font-size:13px;margin-bottom:4px;overflow-wrap:anywhere}
.dh .id{font-weight:600}
.note{color:#92400e;font-size:13px}
.hist{display:inline-flex;align-items:flex-end;gap:1px;height:20px;vertical-align:middle}
.hist span{width:6px;background:#7aa7e0;display:inline-block}
.freq table{min-width:230px}
.freq td.t{max-width:320px;overflow-wrap:anywhere}
"""


def _number(value) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else esc(value)


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _kv(items: Sequence[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _run_section(out: OutputDir, manifest: dict, complete: bool) -> str:
    counts = manifest.get("counts", {})
    summary = manifest.get("summary") or {}
    files = manifest.get("files") or {}
    state = (
        "complete"
        if complete
        else f"incomplete: {len(manifest.get('parts', []))} parts committed so far (no _SUCCESS)"
    )
    columns = [
        [
            ("documents", _number(counts.get("documents"))),
            ("annotated", _number(counts.get("annotated"))),
            ("rejected", _number(counts.get("rejected"))),
            ("spans", _number(counts.get("spans"))),
            ("tokens", _number(counts.get("tokens"))),
            (
                "input files",
                esc(
                    f"{len(manifest.get('inputs', []))} ({files.get('read', '-')} read, "
                    f"{files.get('rejected', '-')} rejected; {files.get('skipped', '-')} "
                    "skipped for their extension)"
                ),
            ),
        ],
        [
            ("tokens per second", _number(summary.get("tokens_per_second"))),
            ("seconds", _number(summary.get("seconds"))),
            ("bundle id", esc(manifest.get("bundle_id", "-"))),
            ("bundle", esc(manifest.get("bundle", "-"))),
            ("variant", esc(manifest.get("variant", "-"))),
            ("runtime", esc(manifest.get("settings", {}).get("runtime", "onnxruntime"))),
            ("device", esc(manifest.get("device", "-"))),
        ],
        [
            ("state", esc(state)),
            ("parts", _number(len(manifest.get("parts", [])))),
            ("started", esc(manifest.get("started", "-"))),
            ("finished", esc(manifest.get("finished", "-"))),
            ("runs", _number(manifest.get("runs"))),
            ("versions", esc(json.dumps(manifest.get("versions", {})))),
        ],
    ]
    settings = dict(manifest.get("settings", {}))
    read = settings.pop("read", {})
    options = [
        (key, esc(json.dumps(value)))
        for key, value in {**manifest.get("options", {}), **settings}.items()
        if key not in ("read",)
    ] + [(f"read.{key}", esc(json.dumps(value))) for key, value in read.items()]
    return (
        f'<section><h2>Run</h2><p class="muted">{esc(out)}</p><div class="kv3">'
        + "".join(_kv(column) for column in columns)
        + "</div><details><summary>Options of the run</summary>"
        + _kv(options)
        + "</details></section>"
    )


def _labels_section(result: Scan, labels: Labels) -> str:
    total = sum(result.label_counts.values()) or 1
    rows = []
    for label, count in sorted(result.label_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        mean = result.label_score_sums[label] / count if count else math.nan
        hist = result.histograms[label]
        peak = hist.max() or 1
        bars = "".join(
            f'<span style="height:{max(1, round(20 * v / peak))}px" '
            f'title="{i / 10:.1f}-{(i + 1) / 10:.1f}: {v:,}"></span>'
            for i, v in enumerate(hist.tolist())
        )
        rows.append(
            [
                labels.chip(label),
                f"{count:,}",
                '<span class="nowrap">'
                + bar(count / total, labels.colour[label])
                + f"{100 * count / total:.1f}%</span>",
                f"{mean:.3f}",
                f'<span class="hist">{bars}</span>',
            ]
        )
    body = (
        table(["label", "spans", "share", "mean score", "scores 0 to 1"], rows)
        if rows
        else "<p>No entities.</p>"
    )
    return f"<section><h2>Entities per label</h2>{body}</section>"


def _rejects_section(rejects: list[tuple], rows: int, rejected: int) -> str:
    if not rejected and not rows:
        return (
            "<section><h2>Rejected documents</h2><p>None: every document was annotated.</p>"
            "</section>"
        )
    shown = rejects[:30]
    body = table(
        ["reason", "count", "example"],
        (
            [
                esc(kind),
                f"{count:,}",
                esc(
                    f"{source or '-'}"
                    + (f" · {doc_id}" if doc_id else "")
                    + (f" · line {line}" if line is not None else "")
                    + (f": {reason}" if reason != kind else "")
                ),
            ]
            for kind, count, source, doc_id, line, reason in shown
        ),
    )
    more = (
        f'<p class="muted">{len(rejects) - len(shown)} more reasons not shown.</p>'
        if len(rejects) > len(shown)
        else ""
    )
    return (
        f"<section><h2>Rejected documents ({rejected:,})</h2>"
        '<p class="muted">Numbers in the reasons are shown as N to group them; the example is '
        f"the first of each.</p>{body}{more}</section>"
    )


def _frequent_section(result: Scan, labels: Labels, wanted: Sequence[str]) -> str:
    tables = []
    for label in sorted(result.frequent, key=lambda lb: -result.label_counts.get(lb, 0)):
        if wanted and label not in wanted:
            continue
        rows = [
            [f'<span class="t">{esc(_short(text or ""))}</span>', f"{n:,}", f"{mean:.3f}"]
            for text, n, mean in result.frequent[label]
        ]
        tables.append(
            f"<div><h3>{labels.chip(label)}</h3>"
            + table(["text", "count", "mean score"], rows)
            + "</div>"
        )
    note = (
        f'<p class="note">Approximate: more than {result.distinct:,} distinct entity texts; '
        "the table was pruned to the most frequent per label along the way, so counts are lower "
        "bounds.</p>"
        if result.approximate
        else f'<p class="muted">Exact, over {result.rows:,} spans ({result.distinct:,} distinct '
        "label and text pairs).</p>"
    )
    return (
        '<section class="freq"><h2>Most frequent entities</h2>'
        + note
        + '<div class="grid">'
        + "".join(tables)
        + "</div></section>"
    )


def _document(
    index: int, doc: SampledDoc, labels: Labels, options: ViewOptions
) -> tuple[str, list]:
    """HTML of one sampled document and its problems [(doc, span, why)]."""
    header = [f'<span class="id">{esc(doc.doc_id)}</span>']
    details = [doc.source]
    if doc.text is None:
        details.append(_count(len(doc.spans), "entity", "entities"))
        chips = " ".join(
            f"{labels.chip(s.label)} {esc(_short(s.surface or ''))}" for s in doc.spans[:50]
        )
        body = (
            f'<div class="note">Text not shown: {esc(doc.note or "unknown")}. The output '
            f"records these entities:</div><div>{chips}</div>"
        )
        header.append(f'<span class="muted">{esc(" · ".join(details))}</span>')
        return (
            f'<article class="doc" data-doc="{index}" data-id="{esc(doc.doc_id)}">'
            f'<div class="dh">{" ".join(header)}</div>{body}</article>',
            [(doc, None, f"text not shown: {doc.note}")],
        )
    text = doc.text
    spans = [dataclasses.replace(s, extra={"start": s.start, "end": s.end}) for s in doc.spans]
    drawable, problems = check_spans(text, spans)
    details += [
        _count(len(text), "character", "characters"),
        _count(len(drawable), "entity", "entities"),
    ]
    notes = []
    if BIDI_CONTROLS.search(text):
        notes.append("contains bidirectional control characters")
    if "\0" in text:
        notes.append("NUL characters shown as \u2400")
    if problems:
        notes.append(f"{len(problems)} spans not drawn (see Problems)")
    if len(text) > options.long_document:
        ranges, left_out = context_windows(text, drawable, options.context, options.budget)
        if not drawable:
            ranges = [(0, min(len(text), options.budget // 4))]
        pieces = []
        position = 0
        for begin, end in ranges:
            if begin > position:
                pieces.append(
                    f'<span class="gap" title="characters {position:,} to {begin:,} not shown">'
                    "\u2026</span>"
                )
            inside = [s for s in drawable if begin <= s.start and s.end <= end]
            pieces.append(highlight(text, inside, labels, begin, end))
            position = end
        if position < len(text):
            pieces.append(
                f'<span class="gap" title="characters {position:,} to {len(text):,} not shown">'
                "\u2026</span>"
            )
        body_html = "".join(pieces)
        notes.append(
            f"long document: shown around its entities ({len(ranges)} excerpts"
            + (f"; {left_out} more entities not shown" if left_out else "")
            + ")"
        )
    else:
        body_html = highlight(text, drawable, labels)
    header.append(f'<span class="muted">{esc(" · ".join(details))}</span>')
    if notes:
        header.append(f'<span class="note">{esc("; ".join(notes))}</span>')
    return (
        f'<article class="doc" data-doc="{index}" data-id="{esc(doc.doc_id)}">'
        f'<div class="dh">{" · ".join(header)}</div>'
        f'<div class="text" dir="auto">{body_html}</div></article>',
        [(doc, span, why) for span, why in problems],
    )


def _sample_section(
    result: Scan, labels: Labels, options: ViewOptions, documents_html: list[str]
) -> str:
    wanted = set(options.labels)
    boxes = "".join(
        f'<label><input type="checkbox" class="lab" value="{esc(label)}"'
        f"{' checked' if not wanted or label in wanted else ''}> {labels.chip(label)}</label>"
        for label in labels.order
    )
    filters = []
    if options.labels:
        filters.append("label " + ", ".join(options.labels))
    if options.min_score > 0:
        filters.append(f"score at least {options.min_score:g}")
    if options.query:
        filters.append(f"entity text containing {options.query!r}")
    which = (
        f"{result.matching:,} documents with an entity matching {'; '.join(filters)}"
        if filters
        else f"{result.documents:,} documents with at least one entity"
    )
    controls = (
        '<div class="controls">'
        f'<span>{boxes} <button type="button" id="all">all</button>'
        '<button type="button" id="none">none</button></span>'
        f'<label>min score <input type="range" id="min" min="0" max="1" step="0.01" '
        f'value="{options.min_score:g}"> <output id="min-value">{options.min_score:.2f}</output>'
        "</label>"
        f'<label>search <input type="search" id="q" value="{esc(options.query or "")}" '
        'placeholder="text in the documents"></label><span id="status"></span></div>'
    )
    intro = (
        f'<p class="muted">{len(result.sample)} documents drawn at random (seed {options.seed}) '
        f"from the {which}. Hover over an entity for its score and offsets. Documents without "
        "entities are not in the sample.</p>"
    )
    body = "".join(documents_html) if documents_html else "<p>No documents to show.</p>"
    return f'<section id="sample"><h2>Sample</h2>{intro}{controls}{body}</section>'


def _problems_section(problems: list[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = (
        f"<li>... and {len(problems) - MAX_PROBLEMS_SHOWN} more</li>"
        if len(problems) > MAX_PROBLEMS_SHOWN
        else ""
    )
    return (
        f'<section class="problems"><h2>Problems ({len(problems)})</h2><ul>{items}{more}</ul>'
        "</section>"
    )


def _inputs_section(statuses: dict[str, InputStatus], manifest: dict) -> str:
    if not statuses:
        return ""
    rows = []
    for source, status in sorted(
        statuses.items(), key=lambda kv: (kv[1].recorded or {}).get("index", 1 << 62)
    ):
        size = (status.recorded or {}).get("size")
        rows.append(
            [
                esc(source),
                _number(size),
                esc(status.note or "read"),
            ]
        )
    return (
        f'<section><h2>Inputs re-read</h2><p class="muted">{len(statuses)} of the '
        f"{len(manifest.get('inputs', []))} input files hold the sampled documents; each was "
        "read up to its last sampled document with the read options of the run.</p>"
        + table(["input", "bytes at the run", "status"], rows)
        + "</section>"
    )


# --- entry point ---------------------------------------------------------------------------------


def _write(location: str | Path, text: str) -> None:
    """The page to a local path (written under a temporary name, then renamed) or a URI."""
    data = text.encode("utf-8")
    location = str(location)
    try:
        if is_uri(location):
            remote = open_remote(location)
            with remote.filesystem.open_output_stream(remote.path) as f:
                f.write(data)
            return
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {location}: {e.strerror or e}") from e


def _open_output(output: str | Path) -> tuple[OutputDir, dict, list[str], list[str]]:
    """(output, its manifest, the parts it names that exist, those that are missing)."""
    out = OutputDir(output)
    if not out.exists():
        raise OutputError(f"{out} does not exist")
    manifest = read_manifest(out)
    if manifest is None:
        raise OutputError(f"{out} is not an annotate output (no {MANIFEST})")
    parts = [p["file"] for p in manifest.get("parts", [])]
    missing = [p for p in parts if not out.exists(p)]
    return out, manifest, [p for p in parts if p not in missing], missing


def _documents_html(sample: list, labels, options: ViewOptions, problems: list[str]) -> list[str]:
    """The HTML of each sampled document; the spans that cannot be drawn go to `problems`."""
    documents_html = []
    for index, doc in enumerate(sample):
        html_text, doc_problems = _document(index, doc, labels, options)
        documents_html.append(html_text)
        for _, span, why in doc_problems:
            if span is None:
                continue  # the input's problem, listed once above
            problems.append(
                f"document {doc.doc_id} ({doc.source}): {span.label} span [{span.start}, "
                f"{span.end}) {why}"
            )
    return documents_html


def build_view(output: str | Path, options: ViewOptions | None = None) -> tuple[str, dict]:
    """The page (HTML) for the annotate output at `output` and a summary of what it shows."""
    options = options or ViewOptions()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    out, manifest, parts, missing_parts = _open_output(output)
    complete = out.exists(SUCCESS)
    problems = [
        f"part {name} is named in the manifest but missing from the output"
        for name in missing_parts
    ]

    result = scan(out, parts, options)
    timings["scan"] = time.perf_counter() - started
    problems += result.errors
    spans_recorded = manifest.get("counts", {}).get("spans")
    complete_read = not missing_parts and not result.errors
    if spans_recorded is not None and spans_recorded != result.rows and complete_read:
        problems.append(
            f"the manifest counts {spans_recorded:,} spans, the parts hold {result.rows:,} rows"
        )
    rejects, reject_rows, reject_problems = reject_summary(out, manifest)
    problems += reject_problems
    rejected = manifest.get("counts", {}).get("rejected", 0)
    if reject_rows != rejected:
        problems.append(
            f"the manifest counts {rejected:,} rejected documents, {REJECTS}/ holds "
            f"{reject_rows:,} rows"
        )
    timings["rejects"] = time.perf_counter() - started - timings["scan"]

    mark = time.perf_counter()
    problems += read_sample_rows(out, parts, result.sample)
    timings["sample_rows"] = time.perf_counter() - mark
    mark = time.perf_counter()
    statuses = read_texts(manifest, result.sample, options.inputs)
    timings["inputs"] = time.perf_counter() - mark
    for source, status in statuses.items():
        if status.problem:
            problems.append(f"input {source}: {status.note}")
    # A document whose input was found but that is not in it (an input's own problem is above).
    for doc in result.sample:
        if doc.text is None and doc.source in statuses and statuses[doc.source].file is not None:
            problems.append(f"document {doc.doc_id}: {doc.note}")

    mark = time.perf_counter()
    sample = sorted(result.sample, key=lambda d: (d.order, d.key))
    labels = Labels(
        list(result.label_counts)
        + [s.label for d in sample for s in d.spans]
        + list(options.labels)
    )
    documents_html = _documents_html(sample, labels, options, problems)
    body = (
        _problems_section(problems)
        + _run_section(out, manifest, complete)
        + '<div class="cols">'
        + _labels_section(result, labels)
        + _rejects_section(rejects, reject_rows, rejected)
        + "</div>"
        + _sample_section(result, labels, options, documents_html)
        + _frequent_section(result, labels, options.labels)
        + _inputs_section(statuses, manifest)
        + f'<p class="muted">Written by nerbatch {esc(__version__)} (nerbatch view).</p>'
    )
    html_text = page(
        f"nerbatch view: {Path(str(out)).name or out}",
        str(out),
        body,
        script=SCRIPT,
        style=VIEW_STYLE + labels.css(),
    )
    timings["render"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    summary = {
        "output": str(out),
        "documents": result.documents,
        "matching": result.matching,
        "sampled": len(sample),
        "shown_with_text": sum(1 for d in sample if d.text is not None),
        "spans": result.rows,
        "labels": dict(result.label_counts),
        "approximate": result.approximate,
        "problems": problems,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    return html_text, summary


def view(
    output: str | Path,
    html_path: str | Path = "view.html",
    options: ViewOptions | None = None,
) -> dict:
    """Write the HTML page of the annotate output at `output` to `html_path` (a local path or a
    URI); returns a summary (documents sampled, problems, seconds per phase)."""
    html_text, summary = build_view(output, options)
    _write(html_path, html_text)
    summary["html"] = str(html_path)
    return summary
