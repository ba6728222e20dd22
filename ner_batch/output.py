"""The annotate output: a Parquet dataset directory (Spark convention).

`part-NNNNN.parquet` files of entity spans, `_rejects/` (a Parquet dataset of its own, one
`part-NNNNN.parquet` per span part that had rejects) for documents that could not be read,
`_manifest.json` (inputs, progress, counts, bundle id, versions) and `_SUCCESS` once complete.
A part is written under a temporary name, fsynced and renamed, and only then named in the
manifest, itself replaced atomically: a reader never sees a half-written part, and a crashed run
resumes from the last committed part. pyarrow, pandas and Spark read the directory as one table
(they skip names starting with `_` or `.`); polars and duckdb read `OUT/*.parquet`. Rejects live
in a subdirectory rather than in a `_rejects.parquet` beside the parts, because duckdb and polars
globs would otherwise read them as spans.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputError
from .tagger import Span

SPAN_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("score", pa.float32()),
        ("model", pa.string()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("doc_id", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
    ]
)
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
REJECTS = "_rejects"
MANIFEST_FORMAT = "nerbatch-annotate/1"


def fsync_write(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically: temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """Spans of one part: buffered, written in row groups as they come, committed atomically."""

    def __init__(self, path: Path, row_group_size: int = 65536):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.row_group_size = row_group_size
        self.columns: dict[str, list] = {name: [] for name in SPAN_SCHEMA.names}
        self.rows = 0
        self.writer = pq.ParquetWriter(self.tmp, SPAN_SCHEMA, compression="zstd")

    def add(self, doc_id: str, source: str, text: str, spans: list[Span], model: str) -> None:
        c = self.columns
        for span in spans:
            c["doc_id"].append(doc_id)
            c["source"].append(source)
            c["start"].append(span.start)
            c["end"].append(span.end)
            c["label"].append(span.label)
            c["text"].append(text[span.start : span.end])
            c["score"].append(span.score)
            c["model"].append(model)
        if len(c["doc_id"]) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        n = len(self.columns["doc_id"])
        if n:
            self.writer.write_table(pa.table(self.columns, schema=SPAN_SCHEMA))
            self.rows += n
            self.columns = {name: [] for name in SPAN_SCHEMA.names}

    def commit(self) -> int:
        """Flush, fsync and rename into place; returns the number of rows."""
        self._flush()
        self.writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.rows

    def abort(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass  # closing flushes, which fails on a full disk: the file is dropped anyway
        finally:
            self.tmp.unlink(missing_ok=True)


def write_rejects(path: Path, rejects: list) -> None:
    table = pa.table(
        {
            "source": [r.source for r in rejects],
            "doc_id": [r.doc_id for r in rejects],
            "line": [r.line for r in rejects],
            "reason": [r.reason for r in rejects],
        },
        schema=REJECT_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fsync_write(path, sink.getvalue().to_pybytes())


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OutputError(f"{path} is unreadable ({e}); use --overwrite to start over") from e


def write_manifest(out: Path, manifest: dict) -> None:
    fsync_write(out / MANIFEST, json.dumps(manifest, indent=2).encode())


def read_spans(out: str | Path) -> dict[str, list[Span]]:
    """All spans of an annotate output, grouped by document id (for scoring)."""
    out = Path(out)
    if not (out / SUCCESS).exists():
        manifest = read_manifest(out) if out.is_dir() else None
        state = (
            "does not exist"
            if not out.exists()
            else (
                "is not an annotate output" if manifest is None else "is incomplete (no _SUCCESS)"
            )
        )
        raise OutputError(f"{out} {state}")
    table = pq.read_table(out, columns=["doc_id", "start", "end", "label", "score"])
    spans: dict[str, list[Span]] = defaultdict(list)
    columns = [table.column(n).to_pylist() for n in ("doc_id", "start", "end", "label", "score")]
    for doc_id, start, end, label, score in zip(*columns, strict=True):
        spans[doc_id].append(Span(start, end, label, score))
    return dict(spans)
