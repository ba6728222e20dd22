"""The annotate output: a Parquet dataset directory (Spark convention).

`part-NNNNN.parquet` files of entity spans, `_rejects/` (a Parquet dataset of its own, one
`part-NNNNN.parquet` per span part that had rejects) for documents that could not be read,
`_manifest.json` (inputs, progress, counts, bundle id, versions) and `_SUCCESS` once complete.
A part is written under a temporary name, fsynced and renamed, and only then named in the
manifest, itself replaced atomically: a reader never sees a half-written part, and a crashed run
resumes from the last committed part. On an object store (`s3://...`) the same protocol runs
without the fsyncs: a part is uploaded under its temporary name and copied to its final key (an
object appears whole or not at all), then the manifest object is replaced. pyarrow, pandas and
Spark read the directory as one table (they skip names starting with `_` or `.`); polars and
duckdb read `OUT/*.parquet`. Rejects live in a subdirectory rather than in a `_rejects.parquet`
beside the parts, because duckdb and polars globs would otherwise read them as spans.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputError
from .storage import Remote, is_uri, local_path, open_remote
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


class OutputDir:
    """Where an annotate output lives: a local directory or an object-store prefix.

    Names are relative to the output (`part-00000.parquet`, `_rejects/part-00000.parquet`).
    Local writes are fsynced and renamed into place; remote ones are uploaded under a temporary
    name and moved (a server-side copy: the final object appears whole).
    """

    def __init__(self, location: str | Path):
        location = str(location)
        self.location = location.rstrip("/") or location
        self.remote: Remote | None = open_remote(location) if is_uri(location) else None
        self.local = None if self.remote else Path(local_path(location))

    def __str__(self) -> str:
        return self.location

    def uri(self, name: str) -> str:
        return str(self.local / name) if self.local else self.remote.child(name).uri

    def _info(self, name: str | None = None):
        path = self.remote.path if name is None else self.remote.child(name).path
        return self.remote.filesystem.get_file_info(path)

    def exists(self, name: str | None = None) -> bool:
        if self.local:
            return (self.local / name if name else self.local).exists()
        import pyarrow.fs as pafs

        return self._info(name).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        if self.local:
            return self.local.is_dir()
        import pyarrow.fs as pafs

        # An empty prefix does not exist on an object store; it is a directory to be.
        return self._info().type in (pafs.FileType.Directory, pafs.FileType.NotFound)

    def mkdir(self, name: str | None = None) -> None:
        if self.local:
            (self.local / name if name else self.local).mkdir(parents=True, exist_ok=True)
        else:
            path = self.remote.path if name is None else self.remote.child(name).path
            self.remote.filesystem.create_dir(path, recursive=True)

    def names(self, directory: str | None = None) -> list[str]:
        """The entries of the output (or of one of its directories, such as `_rejects`)."""
        if self.local:
            where = self.local / directory if directory else self.local
            return sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        import pyarrow.fs as pafs

        path = self.remote.child(directory).path if directory else self.remote.path
        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(
            i.path.rsplit("/", 1)[-1] for i in self.remote.filesystem.get_file_info(selector)
        )

    def remove(self, name: str) -> None:
        """Delete a file or a directory of the output (missing is fine)."""
        if self.local:
            path = self.local / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        import pyarrow.fs as pafs

        fs, info = self.remote.filesystem, self._info(name)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(info.path)

    def read_bytes(self, name: str) -> bytes | None:
        """The content of a file of the output, or None if it does not exist."""
        if self.local:
            path = self.local / name
            return path.read_bytes() if path.exists() else None
        if not self.exists(name):
            return None
        with self.remote.filesystem.open_input_stream(
            self.remote.child(name).path, compression=None
        ) as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace a file of the output atomically."""
        if self.local:
            fsync_write(self.local / name, data)
        else:
            with self.remote.filesystem.open_output_stream(self.remote.child(name).path) as f:
                f.write(data)

    def sink(self, name: str):
        """(where, filesystem) for pyarrow writers: the temporary name of `name`."""
        tmp = _tmp_name(name)
        if self.local:
            return str(self.local / tmp), None
        return self.remote.child(tmp).path, self.remote.filesystem

    def publish(self, name: str) -> None:
        """Move the temporary file of `name` (written through `sink`) into place, durably."""
        tmp = _tmp_name(name)
        if self.local:
            path = self.local / name
            with open(self.local / tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.local / tmp, path)
            _fsync_dir(path.parent)
        else:
            fs = self.remote.filesystem
            fs.move(self.remote.child(tmp).path, self.remote.child(name).path)

    def discard(self, name: str) -> None:
        """Drop the temporary file of `name`, if any."""
        with contextlib.suppress(OSError):
            self.remove(_tmp_name(name))


def _tmp_name(name: str) -> str:
    head, _, tail = name.rpartition("/")
    return f"{head}/.{tail}.tmp" if head else f".{tail}.tmp"


class PartWriter:
    """Spans of one part: buffered, written in row groups as they come, committed atomically.

    Writes to any pyarrow sink (a path, with a filesystem, or a stream such as
    `pa.BufferOutputStream()`); `in_output` makes one that writes an output's part under its
    temporary name and publishes it on commit. As a context manager it commits on a clean exit
    and aborts (closes and discards the temporary file) on an error.
    """

    def __init__(
        self,
        sink,
        name: str = "",
        filesystem=None,
        row_group_size: int = 65536,
        publish=None,
        discard=None,
    ):
        self.name = name
        self.row_group_size = row_group_size
        self.columns: dict[str, list] = {column: [] for column in SPAN_SCHEMA.names}
        self.rows = 0
        self._publish = publish
        self._discard = discard
        self.writer = pq.ParquetWriter(sink, SPAN_SCHEMA, filesystem=filesystem, compression="zstd")
        self.closed = False

    @classmethod
    def in_output(cls, out: OutputDir, name: str, row_group_size: int = 65536) -> PartWriter:
        """A writer of the part `name` of `out`."""
        where, filesystem = out.sink(name)
        return cls(
            where,
            name,
            filesystem,
            row_group_size,
            publish=lambda: out.publish(name),
            discard=lambda: out.discard(name),
        )

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.abort()
        elif not self.closed:
            self.commit()

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

    def add_table(self, table: pa.Table) -> None:
        """Span rows made elsewhere (the Ray engine's workers), with SPAN_SCHEMA's columns."""
        for name in SPAN_SCHEMA.names:
            self.columns[name].extend(table.column(name).to_pylist())
        if len(self.columns["doc_id"]) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        n = len(self.columns["doc_id"])
        if n:
            self.writer.write_table(pa.table(self.columns, schema=SPAN_SCHEMA))
            self.rows += n
            self.columns = {name: [] for name in SPAN_SCHEMA.names}

    def commit(self) -> int:
        """Flush, close and move into place; returns the number of rows."""
        self._flush()
        self.writer.close()
        self.closed = True
        if self._publish is not None:
            self._publish()
        return self.rows

    def abort(self) -> None:
        """Close and drop what was written (a no-op after commit)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
        except OSError:
            pass  # closing flushes, which fails on a full disk: the file is dropped anyway
        finally:
            if self._discard is not None:
                self._discard()


def write_rejects(out: OutputDir, name: str, rejects: list) -> None:
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
    out.write_bytes(name, sink.getvalue().to_pybytes())


def read_manifest(out: OutputDir) -> dict | None:
    """The output's manifest, None if it has none; refuses one that is unreadable or of a format
    this version does not write (MANIFEST_FORMAT)."""
    try:
        data = out.read_bytes(MANIFEST)
        manifest = None if data is None else json.loads(data)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OutputError(
            f"{out.uri(MANIFEST)} is unreadable ({e}); use --overwrite to start over"
        ) from e
    if manifest is None:
        return None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != MANIFEST_FORMAT:
        raise OutputError(
            f"{out.uri(MANIFEST)} has format {found!r}, not {MANIFEST_FORMAT!r}: it was not "
            "written by this version of nerbatch annotate; use --overwrite to start over"
        )
    return manifest


def write_manifest(out: OutputDir, manifest: dict) -> None:
    out.write_bytes(MANIFEST, json.dumps(manifest, indent=2).encode())


def read_spans(location: str | Path) -> dict[str, list[Span]]:
    """All spans of an annotate output, grouped by document id (for scoring)."""
    out = OutputDir(location)
    if not out.exists(SUCCESS):
        exists = out.exists() and (out.remote is not None or out.local.is_dir())
        manifest = read_manifest(out) if exists else None
        state = (
            "does not exist"
            if not out.exists()
            else (
                "is not an annotate output" if manifest is None else "is incomplete (no _SUCCESS)"
            )
        )
        raise OutputError(f"{out} {state}")
    columns = ["doc_id", "start", "end", "label", "score"]
    if out.local:
        table = pq.read_table(out.local, columns=columns)
    else:
        table = pq.read_table(out.remote.path, columns=columns, filesystem=out.remote.filesystem)
    spans: dict[str, list[Span]] = defaultdict(list)
    values = [table.column(n).to_pylist() for n in columns]
    for doc_id, start, end, label, score in zip(*values, strict=True):
        spans[doc_id].append(Span(start, end, label, score))
    return dict(spans)
