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
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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
SPAN_FIELDS = ("start", "end", "label", "text", "score")  # a span's own columns
SPAN_STRUCT = pa.struct([SPAN_SCHEMA.field(name) for name in SPAN_FIELDS])
REJECT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("doc_id", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
    ]
)
MANIFEST = "_manifest.json"  # its format: manifest.py
SUCCESS = "_SUCCESS"
REJECTS = "_rejects"
LOCK = "_lock"  # lock.py


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
    and aborts (closes and discards the temporary file) on an error. Rows stay Arrow from the
    engine to the file: buffered tables are written together once `row_group_size` rows wait.
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
        self.buffered: list[pa.Table] = []
        self.buffered_rows = 0
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
        """The spans of one document."""
        document = SimpleNamespace(doc_id=doc_id, source=source, text=text)
        self.add_table(spans_table([document], [spans], model)[0])

    def add_table(self, table: pa.Table, rows_per_document: Sequence[int] | None = None) -> None:
        """Span rows with SPAN_SCHEMA's columns. With `rows_per_document` (the rows of each
        document in `table`, in order), row groups end at the first document bound where
        `row_group_size` rows wait, as if the documents were added one by one; without it,
        at the end of the table."""
        table = table.select(SPAN_SCHEMA.names).cast(SPAN_SCHEMA)
        if rows_per_document is None:
            self._buffer(table)
            return
        start = 0
        ends = np.cumsum(np.asarray(rows_per_document, dtype=np.int64))
        while start < table.num_rows:
            # the first document bound at which the buffer holds a row group's worth
            wanted = self.row_group_size - self.buffered_rows + start
            at = int(np.searchsorted(ends, wanted, side="left"))
            end = int(ends[at]) if at < len(ends) else table.num_rows
            self._buffer(table.slice(start, end - start))
            start = end

    def _buffer(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffered.append(table)
            self.buffered_rows += table.num_rows
        if self.buffered_rows >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self.buffered_rows:
            self.writer.write_table(pa.concat_tables(self.buffered).combine_chunks())
            self.rows += self.buffered_rows
            self.buffered, self.buffered_rows = [], 0

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


def span_columns(texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> tuple[dict, list[int]]:
    """The span columns (SPAN_FIELDS) of every span of these texts, in order, and the number
    of spans of each text. Scores become float32, as in the output."""
    columns: dict[str, list] = {name: [] for name in SPAN_FIELDS}
    counts = []
    for text, text_spans in zip(texts, spans, strict=True):
        for span in text_spans:
            columns["start"].append(span.start)
            columns["end"].append(span.end)
            columns["label"].append(span.label)
            columns["text"].append(text[span.start : span.end])
            columns["score"].append(span.score)
        counts.append(len(text_spans))
    arrays = {name: pa.array(columns[name], SPAN_SCHEMA.field(name).type) for name in SPAN_FIELDS}
    return arrays, counts


def spans_table(documents: Sequence, spans: Sequence[Sequence[Span]], model: str):
    """(SPAN_SCHEMA table, rows of each document) of the documents' spans: one row per span,
    with its document's `doc_id` and `source` and the bundle id `model`."""
    columns, counts = span_columns([d.text for d in documents], spans)
    owner = np.repeat(np.arange(len(documents)), counts)
    table = pa.table(
        {
            "doc_id": pa.array([d.doc_id for d in documents], pa.string()).take(owner),
            "source": pa.array([d.source for d in documents], pa.string()).take(owner),
            **columns,
            "model": pa.array([model] * len(owner), pa.string()),
        },
        schema=SPAN_SCHEMA,
    )
    return table, counts


def make_output_dir(out: OutputDir) -> None:
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory; choose another output")
        out.mkdir()
    except OSError as e:  # a read-only place, a path through a file, a vanished mount, ...
        raise OutputError(f"cannot create the output {out}: {e.strerror or e}") from e


# What annotate writes into an output, by name; `--overwrite` removes these and nothing else.
_PART = r"part-\d{5,}\.parquet"
_OURS = re.compile(
    rf"({_PART}|_manifest\.json|_SUCCESS|_lock|\.({_PART}|_manifest\.json|_SUCCESS)\.tmp)"
)
_OURS_IN_REJECTS = re.compile(rf"{_PART}|\.{_PART}\.tmp")


def foreign_files(out: OutputDir) -> list[str]:
    """Entries of the output that annotate did not write (by their names; parts only beside a
    manifest, which every output of ours has from the start of its first run)."""
    names = out.names()
    has_manifest = MANIFEST in names
    foreign = []
    for name in names:
        if name == REJECTS:
            foreign += [
                f"{REJECTS}/{n}" for n in out.names(REJECTS) if not _OURS_IN_REJECTS.fullmatch(n)
            ]
        elif not _OURS.fullmatch(name) or (re.fullmatch(_PART, name) and not has_manifest):
            foreign.append(name)
    return foreign


def refuse_foreign_files(out: OutputDir) -> None:
    """--overwrite deletes an annotate output only: refuse, listing them, when the output holds
    anything annotate does not write (a wrong directory must not lose a user's files). The
    manifest is not read: it may be the corrupt one that --overwrite is meant to get rid of."""
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:10]) + (
            f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        )
        raise OutputError(
            f"{out} holds files that nerbatch annotate did not write ({shown}); --overwrite "
            "deletes only an annotate output: move them away or choose another output"
        )


def remove_unrecorded(out: OutputDir, parts: set[str], rejects: set[str]) -> None:
    """Remove our files that the manifest does not name (its `parts` and `rejects` files):
    every part and reject file of the output that --overwrite replaces, or a part published
    just before a crash, before its manifest (the resumed run writes it again), and
    temporaries. Called once the manifest is on disk, so that a kill at any point leaves an
    output that the same command completes."""
    for name in out.names():
        if name == REJECTS:
            for entry in out.names(REJECTS):
                if f"{REJECTS}/{entry}" not in rejects and _OURS_IN_REJECTS.fullmatch(entry):
                    out.remove(f"{REJECTS}/{entry}")
        elif _OURS.fullmatch(name) and name not in parts and name not in (MANIFEST, LOCK, SUCCESS):
            out.remove(name)


def is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp") and bool(_OURS.fullmatch(name))


def write_rejects(out: OutputDir, name: str, rejects: list) -> None:
    table = pa.table(
        {field: [getattr(r, field) for r in rejects] for field in REJECT_SCHEMA.names},
        schema=REJECT_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    out.write_bytes(name, sink.getvalue().to_pybytes())


def read_spans(location: str | Path) -> dict[str, list[Span]]:
    """All spans of an annotate output, grouped by document id (for scoring)."""
    out = OutputDir(location)
    if not out.exists(SUCCESS):
        exists = out.exists() and (out.remote is not None or out.local.is_dir())
        state = (
            "does not exist"
            if not out.exists()
            else (
                "is incomplete (no _SUCCESS)"
                if exists and out.exists(MANIFEST)
                else "is not an annotate output"
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
