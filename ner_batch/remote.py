"""What engines whose workers read and tag share (Ray, Spark): the rows between driver and
workers, reading an input file into document rows, a worker's tagger, tagging a table of
documents, and the driver's side that commits the tagged rows in input order.

The driver lists the inputs (plan.py) and gives each worker `file_specs`; a worker reads them
with the local engine's readers (`document_rows`), tags with the local engine's chunks and
Tagger (`tag_table`), and returns TAGGED tables; the driver commits them through the Committer
(`consume`), cut at the local engine's part bounds. So fp32 rows equal the local engine's, and
an output started by one engine is resumed by another.

Deliberately not here: any Ray or Spark API (ray_engine.py, spark.py).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .bundle import load_bundle
from .committer import Committer
from .errors import BundleError, InputError, NerbatchError
from .output import REJECT_SCHEMA, SPAN_FIELDS, SPAN_SCHEMA, SPAN_STRUCT, span_columns
from .plan import RunPlan, log_runtime
from .readers import Document, InputFile, ReadMeter, ReadOptions, Reject, printable, read_file
from .run import StopFlag, tag_in_chunks
from .runtimes import open_tagger
from .storage import is_uri, local_path
from .tagger import Tagger, TaggerOptions

# Between the stages, one row per input document: `input` is its file's index in the run's
# inputs and `item` its position in that file (documents and rejects alike), for order and resume.
DOCUMENTS = pa.schema(
    [
        ("input", pa.int64()),
        ("item", pa.int64()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),  # null for a reject
        ("line", pa.int64()),  # a reject's line, if any
        ("reason", pa.string()),  # a reject's reason
        ("fatal", pa.string()),  # an error that stops the run (as the local engine's would)
        ("bytes", pa.int64()),  # bytes of the input read through this item (progress), or null
    ]
)
TAGGED = pa.schema(
    [
        *(f for f in DOCUMENTS if f.name != "text"),
        ("tokens", pa.int64()),
        ("spans", pa.list_(SPAN_STRUCT)),
    ]
)


def file_specs(plan: RunPlan) -> list[dict]:
    """What a worker needs to read each input left to do: from input `first` of the resume
    point, its first `skip` documents done."""
    first, skip, _ = plan.resume
    files = plan.files
    return [
        {
            "input": index,
            # bytes: a file name that is not UTF-8 (surrogate escapes) is no Arrow string
            "path": f.path.encode("utf-8", "surrogateescape"),
            "format": f.format,
            "size": f.size,
            "mtime": f.mtime,
            "error": f.error,
            # An object-store input's filesystem, as the driver opened it (pyarrow's pickle).
            "remote": pickle.dumps(f.remote) if f.remote is not None else None,
            "skip": skip if index == first else 0,
        }
        for index, f in enumerate(files)
        if index >= first
    ]


def worker_spec(
    model: str,
    variant: str,
    runtime: str,
    device: str,
    window: tuple[int, int],
    threads: int,
    options: TaggerOptions,
) -> dict:
    """What a worker needs to open its tagger (`open_worker_tagger`), as plain values: the
    bundle (an absolute path, or a URI), the precision, the runtime (`auto`: the worker
    chooses), the device, the window, the runtime's threads and the batching options."""
    return {
        "model": model if is_uri(model) else os.path.abspath(local_path(model)),
        "variant": variant,
        "runtime": runtime,
        "device": device,
        "max_length": window[0],
        "stride": window[1],
        "threads": threads,
        "options": asdict(options),
    }


def tagger_spec(plan: RunPlan, threads: int) -> dict:
    """`worker_spec` of a run's plan, with `threads` per worker."""
    config = plan.config
    return worker_spec(
        str(config.model),
        plan.variant,
        plan.runtime["runtime"],
        config.device,
        plan.window,
        threads,
        config.tagger_options(),
    )


def open_worker_tagger(spec: dict, where: str) -> Tagger:
    """A worker's tagger (`tagger_spec`); `where` names the worker in errors ("Ray node h")."""
    try:
        bundle = load_bundle(spec["model"])
    except BundleError as e:
        raise BundleError(
            f"on {where}: {e}; every node must read the bundle at the same path (a shared "
            "filesystem) or from an object store"
        ) from e
    tagger = open_tagger(
        bundle,
        spec["variant"],
        spec["device"],
        runtime=spec["runtime"],
        max_length=spec["max_length"],
        stride=spec["stride"],
        threads=spec["threads"],
        options=TaggerOptions(**spec["options"]),
    )
    log_runtime(tagger.runtime)
    return tagger


def document_rows(spec: dict, options: ReadOptions, cwd: str, where: str) -> Iterator[dict]:
    """DOCUMENTS rows of one input file (`file_specs`), read with the local engine's readers;
    `cwd`: the driver's working directory; `where` names the worker in errors."""
    given = spec["path"].decode("utf-8", "surrogateescape")
    remote = pickle.loads(spec["remote"]) if spec["remote"] is not None else None
    # A worker's working directory is not the driver's: read relative paths from the driver's,
    # and write ids, sources and messages with the path as given, as the local engine does.
    local = given if remote or os.path.isabs(given) else os.path.join(cwd, given)
    # Readers show paths in their printable form (a name that is not UTF-8 has \xNN escapes).
    shown, shown_local = printable(given), printable(local)

    file = file_of(spec, local, remote)
    meter = ReadMeter([file])  # bytes of this input read so far, for the driver's progress

    def row(item: int, doc_id=None, text=None, line=None, reason=None, fatal=None) -> dict:
        if local != given:
            if doc_id == shown_local or re.fullmatch(
                re.escape(shown_local) + r":\d+", doc_id or ""
            ):
                doc_id = shown + doc_id[len(shown_local) :]  # <file> or <file>:<line>
            reason = reason and reason.replace(shown_local, shown)
            fatal = fatal and fatal.replace(shown_local, shown)
        return {
            "input": spec["input"],
            "item": item,
            "doc_id": doc_id,
            "source": shown,
            "text": text,
            "line": line,
            "reason": reason,
            "fatal": fatal,
            "bytes": meter.bytes,
        }

    if not spec["error"] and not remote and not os.path.exists(local):
        yield row(
            spec["skip"],
            fatal=f"{shown}: not found on {where}; every node must "
            "read the inputs at the same path (a shared filesystem) or from an object store",
        )
        return
    skip = item = spec["skip"]
    try:
        for item, document in enumerate(read_file(file, options, skip, meter), skip):
            if isinstance(document, Document):
                yield row(item, doc_id=document.doc_id, text=document.text)
            else:
                yield row(item, doc_id=document.doc_id, line=document.line, reason=document.reason)
    except NerbatchError as e:  # e.g. a Parquet file without the text column: the run stops
        yield row(item, fatal=str(e))


def file_of(spec: dict, local: str, remote) -> InputFile:
    """The InputFile of a file spec, read at `local` (or through `remote`)."""
    return InputFile(local, spec["format"], spec["size"], spec["mtime"], spec["error"], remote)


def tag_table(tagger: Tagger, batch: pa.Table, chunk_docs: int, chunk_chars: int) -> pa.Table:
    """DOCUMENTS rows -> TAGGED rows: the texts tagged in the local engine's chunks."""
    texts = [t for t in batch.column("text").to_pylist() if t is not None]
    tagged = list(tag_in_chunks(tagger, texts, chunk_docs, chunk_chars))
    columns, counts = span_columns(texts, [spans for _, spans in tagged])
    is_text = pc.is_valid(batch.column("text")).to_numpy(zero_copy_only=False)
    spans_of = np.zeros(batch.num_rows, dtype=np.int64)  # (rows,) spans; 0 for a reject
    tokens = np.zeros(batch.num_rows, dtype=np.int64)
    spans_of[is_text] = counts
    tokens[is_text] = [n for n, _ in tagged]
    offsets = np.concatenate([[0], np.cumsum(spans_of)]).astype(np.int32)
    struct = pa.StructArray.from_arrays(list(columns.values()), fields=list(SPAN_STRUCT))
    spans = pa.ListArray.from_arrays(pa.array(offsets), struct)
    rest = batch.drop_columns(["text"])
    return pa.Table.from_arrays([*rest.columns, pa.array(tokens), spans], schema=TAGGED)


# --- in the driver -------------------------------------------------------------------------------


def consume(committer: Committer, batches: Iterable[pa.Table], drop: int, stop: StopFlag) -> None:
    """Write the tagged rows after the first `drop`, committing every `part_docs` documents."""
    for batch in batches:
        dropped = min(drop, batch.num_rows)
        drop -= dropped
        write_batch(committer, batch.slice(dropped))
        if stop.signal is not None:
            if committer.part is not None:
                committer.commit()
            raise committer.interrupted(stop.signal)


def write_batch(committer: Committer, batch: pa.Table) -> None:
    """One batch of TAGGED rows, cut at part boundaries: parts hold exactly `part_docs`
    documents, as the local engine's do."""
    start = 0
    while start < batch.num_rows:
        size = min(batch.num_rows - start, committer.room)
        rows = batch.slice(start, size)
        last = rows.num_rows - 1
        committer.read(
            size,
            committer.stream_bytes(
                rows.column("input")[last].as_py(), rows.column("bytes")[last].as_py()
            ),
        )
        add_rows(committer, rows)
        start += size
        if committer.room <= 0:
            committer.commit()


def span_rows(annotated: pa.Table, model: str) -> pa.Table:
    """The span rows (output.SPAN_SCHEMA) of TAGGED rows of annotated documents, `model` the
    bundle id: each document's list of spans flattened, its doc_id and source repeated."""
    spans = annotated.column("spans").combine_chunks()  # (documents,) lists of spans
    flat = pc.list_flatten(spans)  # (spans,) structs
    owner = pc.list_parent_indices(spans)  # (spans,) document of each span
    return pa.table(
        {
            "doc_id": annotated.column("doc_id").take(owner),
            "source": annotated.column("source").take(owner),
            **{name: flat.field(name) for name in SPAN_FIELDS},
            "model": pa.array([model] * len(flat), pa.string()),
        },
        schema=SPAN_SCHEMA,
    )


def errors_translated(items: Iterator, translate) -> Iterator:
    """`items`, with any exception its iteration raises (a failure on a worker, relayed by Ray
    or Spark) turned into `translate(exception)`, one of our errors."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as e:  # anything a worker or the cluster raised: see `translate`
            raise translate(e) from e
        yield item


def add_rows(committer: Committer, rows: pa.Table) -> None:
    """TAGGED rows of one part: spans into the part, rejects beside it."""
    fatal = rows.column("fatal")
    if fatal.null_count < len(fatal):
        raise InputError(next(m for m in fatal.to_pylist() if m is not None))
    if not rows.num_rows:
        return
    rejected = pc.is_valid(rows.column("reason"))
    for reject in rows.filter(rejected).select(["input", "item", *REJECT_SCHEMA.names]).to_pylist():
        position = (reject.pop("input"), reject.pop("item") + 1)
        committer.reject(Reject(**reject), position)
    annotated = rows.filter(pc.invert(rejected))
    table = span_rows(annotated, committer.model_id)
    last = (rows.column("input")[-1].as_py(), rows.column("item")[-1].as_py() + 1)
    tokens = pc.sum(annotated.column("tokens")).as_py() or 0
    committer.add_table(table, annotated.num_rows, tokens, last)
