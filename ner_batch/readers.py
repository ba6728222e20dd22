"""Annotate inputs: expand paths / directories / globs into files, and stream each file's
documents. Every document the reader meets comes out either as a `Document` or as a `Reject`
with a reason: nothing is dropped silently. Memory is bounded by one document (one Parquet batch).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .choices import ENCODING_ERRORS, TXT_MODES, check_choice
from .errors import InputError
from .storage import Remote, is_uri, local_path, open_remote

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass
class ReadOptions:
    txt_mode: str = "file"  # one document per .txt file, or one per line (choices.TXT_MODES)
    text_field: str = "text"  # jsonl field / parquet column holding the text
    id_field: str | None = "id"  # jsonl field / parquet column with the document id, if present
    encoding_errors: str = "strict"  # "strict": reject undecodable documents; "replace": U+FFFD

    def check(self) -> None:
        """Raise ValueError for a value no reader knows."""
        check_choice("txt mode", self.txt_mode, TXT_MODES)
        check_choice("encoding_errors", self.encoding_errors, ENCODING_ERRORS)
        if not self.text_field:
            raise ValueError("the text field / column name must not be empty")


@dataclass
class Document:
    doc_id: str
    source: str
    text: str


@dataclass
class Reject:
    source: str
    doc_id: str | None
    line: int | None
    reason: str


@dataclass
class InputFile:
    path: str
    format: str
    size: int
    mtime: float
    error: str | None = None  # found in a directory but not stat-able: read_file rejects it
    remote: Remote | None = None  # set for object-store inputs (`path` is then the URI)

    @property
    def compressed(self) -> bool:
        return self.path.endswith(".gz")


def file_format(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    return FORMATS.get(os.path.splitext(name)[1].lower())


def expand_inputs(inputs: Sequence[str]) -> tuple[list[InputFile], list[str]]:
    """Files from paths, directories (recursive, sorted) and globs, in a deterministic order.

    Returns the files and the paths skipped inside directories for an unknown extension (so the
    caller can report them); a named file with an unknown extension is an error.
    """
    files: list[InputFile] = []
    skipped: list[str] = []
    seen: set[str] = set()

    def add(path: str, named: bool) -> None:
        fmt = file_format(path)
        if fmt is None:
            if named:
                raise InputError(
                    f"{path}: unknown input format; expected one of "
                    f"{sorted(FORMATS)} (optionally .gz)"
                )
            skipped.append(path)
            return
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        try:
            stat = os.stat(path)
        except OSError as e:
            if named:
                raise InputError(f"{path}: cannot read: {e.strerror}") from e
            # A broken link or a link loop inside a directory: reject it, keep the others.
            files.append(InputFile(path, fmt, -1, 0.0, error=f"cannot read: {e.strerror}"))
            return
        files.append(InputFile(path, fmt, stat.st_size, stat.st_mtime))

    for given in inputs:
        if is_uri(given):
            _expand_remote(given, files, skipped)
            continue
        given = local_path(given)
        if any(c in given for c in "*?[") and not os.path.exists(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise InputError(f"{given}: the pattern matches no files")
            for match in matches:
                if os.path.isdir(match):
                    _walk(match, add)
                else:
                    add(match, named=True)
        elif os.path.isdir(given):
            before = len(files)
            _walk(given, add)
            if len(files) == before:
                raise InputError(
                    f"{given}: the directory holds no input files ({', '.join(sorted(FORMATS))}, "
                    "optionally .gz)"
                )
        elif os.path.exists(given):
            add(given, named=True)
        else:
            raise InputError(f"{given}: no such file or directory")
    return files, skipped


def _expand_remote(uri: str, files: list[InputFile], skipped: list[str]) -> None:
    """An object-store file, a prefix (recursive, sorted) or a glob in the last path segment."""
    import fnmatch

    import pyarrow.fs as pafs

    pattern = None
    head, _, last = uri.rstrip("/").rpartition("/")
    if any(c in last for c in "*?["):
        uri, pattern = head, last
    root = open_remote(uri)
    fs = root.filesystem
    try:
        info = fs.get_file_info(root.path)
        if info.type == pafs.FileType.File and pattern is None:
            if file_format(root.path) is None:
                raise InputError(
                    f"{uri}: unknown input format; expected one of {sorted(FORMATS)} "
                    "(optionally .gz)"
                )
            files.append(_remote_file(root, info))
            return
        if info.type != pafs.FileType.Directory:
            raise InputError(f"{uri}: no such object or prefix")
        listing = fs.get_file_info(pafs.FileSelector(root.path, recursive=pattern is None))
    except OSError as e:  # network, credentials, permissions: pyarrow says which
        raise InputError(f"{uri}: cannot list: {e}") from e
    before = len(files)
    for entry in sorted(listing, key=lambda i: i.path):
        relative = entry.path[len(root.path) :].lstrip("/")
        if entry.type != pafs.FileType.File or any(
            part.startswith((".", "_")) for part in relative.split("/")
        ):
            continue  # hidden like local files: `_rejects` of an output, `_temporary`, `.keep`
        if pattern is not None and not fnmatch.fnmatchcase(relative, pattern):
            continue
        child = root.child(relative)
        if file_format(relative) is None:
            skipped.append(child.uri)
        else:
            files.append(_remote_file(child, entry))
    if len(files) == before:
        raise InputError(
            f"{uri if pattern is None else head + '/' + pattern}: no input files there "
            f"({', '.join(sorted(FORMATS))}, optionally .gz)"
        )


def _remote_file(remote: Remote, info) -> InputFile:
    mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
    return InputFile(remote.uri, file_format(remote.path), info.size, mtime, remote=remote)


def _walk(directory: str, add) -> None:
    visited: set[str] = set()
    for root, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink loop: each real directory once
            dirs[:] = []
            continue
        visited.add(real)
        # Hidden like files (Spark convention): `.git`, `_rejects` of an output, `_temporary`.
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(names):
            if not name.startswith((".", "_")):
                add(os.path.join(root, name), named=False)


def _open_binary(file: InputFile, seekable: bool = False):
    if file.remote is not None:
        fs, path = file.remote.filesystem, file.remote.path
        if seekable and not file.compressed:
            raw = fs.open_input_file(path)  # random access, for Parquet footers
        else:
            # compression=None: pyarrow would otherwise gunzip .gz itself, and we do it below
            raw = io.BufferedReader(fs.open_input_stream(path, compression=None), 1 << 20)
    else:
        raw = open(file.path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    return gzip.GzipFile(fileobj=raw) if file.compressed else raw


def read_file(file: InputFile, options: ReadOptions, skip: int = 0) -> Iterator[Document | Reject]:
    """Documents (and rejects) of one input file, in order, from item `skip` on. Errors that end
    the file early (a truncated .gz, an I/O error) come out as a Reject for the rest of the file,
    after what was read. Skipped items are counted without being decoded or parsed, so resuming
    in the middle of a large file costs a scan for line breaks (or Parquet row-group metadata),
    not a re-read of what is done."""
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}[file.format]
    if file.error:
        if not skip:
            yield Reject(file.path, None, None, file.error)
        return
    count = 0  # items of the file so far, skipped ones included
    try:
        for item in reader(file, options, skip):
            if isinstance(item, int):  # the reader passed over this many items before `skip`
                count += item
                continue
            count += 1
            yield item
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        if count >= skip:  # else a resumed run: this reject was committed before
            yield Reject(file.path, None, None, f"file unreadable after {count} documents: {e}")


def _decode(data: bytes, options: ReadOptions) -> str:
    return data.decode("utf-8", errors=options.encoding_errors)


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192] and data.count(b"\x00") > len(data[:8192]) // 100


def _read_txt(
    file: InputFile, options: ReadOptions, skip: int
) -> Iterator[Document | Reject | int]:
    if options.txt_mode == "file" and skip:
        yield 1  # the one document of the file is done: do not even open it
        return
    with _open_binary(file) as f:
        if options.txt_mode == "file":
            data = f.read()
            if _looks_binary(data):
                yield Reject(file.path, file.path, None, "binary file (NUL bytes), not text")
                return
            try:
                yield Document(file.path, file.path, _decode(data, options))
            except UnicodeDecodeError as e:
                yield Reject(file.path, file.path, None, f"not valid UTF-8 at byte {e.start}")
            return
        for number, raw in enumerate(f, start=1):
            if number <= skip:
                yield 1
                continue
            raw = raw.rstrip(b"\r\n")
            doc_id = f"{file.path}:{number}"
            try:
                yield Document(doc_id, file.path, _decode(raw, options))
            except UnicodeDecodeError as e:
                yield Reject(file.path, doc_id, number, f"not valid UTF-8 at byte {e.start}")


def _read_jsonl(
    file: InputFile, options: ReadOptions, skip: int
) -> Iterator[Document | Reject | int]:
    items = 0  # non-blank lines: one document or reject each
    with _open_binary(file) as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # written by Windows tools; json.loads refuses it
            if not raw.strip():
                continue
            items += 1
            if items <= skip:
                yield 1
                continue
            fallback_id = f"{file.path}:{number}"
            try:
                record = json.loads(_decode(raw, options))
            except UnicodeDecodeError as e:
                yield Reject(file.path, fallback_id, number, f"not valid UTF-8 at byte {e.start}")
                continue
            except json.JSONDecodeError as e:
                yield Reject(file.path, fallback_id, number, f"not valid JSON: {e.msg}")
                continue
            if not isinstance(record, dict):
                yield Reject(
                    file.path,
                    fallback_id,
                    number,
                    f"expected a JSON object, found {type(record).__name__}",
                )
                continue
            doc_id = fallback_id
            if options.id_field and record.get(options.id_field) is not None:
                doc_id = str(record[options.id_field])
            if options.text_field not in record:
                yield Reject(
                    file.path,
                    doc_id,
                    number,
                    f"no {options.text_field!r} field (fields: {sorted(record)[:10]})",
                )
                continue
            text = record[options.text_field]
            if not isinstance(text, str):
                yield Reject(
                    file.path,
                    doc_id,
                    number,
                    f"field {options.text_field!r} is {type(text).__name__}, not a string",
                )
                continue
            yield Document(doc_id, file.path, text)


def _read_parquet(
    file: InputFile, options: ReadOptions, skip: int
) -> Iterator[Document | Reject | int]:
    import pyarrow.parquet as pq

    with _open_binary(file, seekable=True) as f:
        source = io.BytesIO(f.read()) if file.compressed else f
        try:
            parquet = pq.ParquetFile(source)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants for bad files
            # One item, the file's reject: committed already when a resumed run skips past it.
            yield 1 if skip else Reject(file.path, None, None, f"not a readable Parquet file: {e}")
            return
        names = parquet.schema_arrow.names
        if options.text_field not in names:
            raise InputError(
                f"{file.path}: no column {options.text_field!r} (columns: {names}); "
                "choose one with --text-column"
            )
        columns = [options.text_field]
        id_column = options.id_field if options.id_field in names else None
        if id_column:
            columns.append(id_column)
        # Whole row groups before `skip` are passed over by their metadata, the rest row by row.
        group, row = 0, 0
        while group < parquet.num_row_groups:
            rows_in_group = parquet.metadata.row_group(group).num_rows
            if row + rows_in_group > skip:
                break
            row += rows_in_group
            group += 1
        if row:
            yield row
        groups = range(group, parquet.num_row_groups)
        for batch in parquet.iter_batches(batch_size=1024, columns=columns, row_groups=groups):
            if row < skip:
                passed = min(skip - row, batch.num_rows)
                batch = batch.slice(passed)
                row += passed
                yield passed
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if id_column else [None] * len(texts)
            for text, doc_id in zip(texts, ids, strict=True):
                row += 1
                doc_id = str(doc_id) if doc_id is not None else f"{file.path}:{row}"
                if isinstance(text, bytes):
                    try:
                        text = _decode(text, options)
                    except UnicodeDecodeError as e:
                        yield Reject(file.path, doc_id, row, f"not valid UTF-8 at byte {e.start}")
                        continue
                if not isinstance(text, str):
                    yield Reject(
                        file.path, doc_id, row, f"column {options.text_field!r} is null or not text"
                    )
                    continue
                yield Document(doc_id, file.path, text)
