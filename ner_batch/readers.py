"""Annotate inputs: expand paths / directories / globs into files, and stream each file's
documents. Every document the reader meets comes out either as a `Document` or as a `Reject`
with a reason: nothing is dropped silently. Memory is bounded by one document (one Parquet batch).

Hostile inputs are readers' business too: special files (FIFOs, devices, sockets) are never opened,
an unreadable directory is a reject, local files are read only up to the size they had when the
run listed them, and every string that reaches the output is valid Unicode (file names that are
not UTF-8 are shown with `\\xNN` escapes, lone surrogates in JSON are rejected or replaced).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import logging
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .choices import ENCODING_ERRORS, TXT_MODES, check_choice
from .errors import InputError
from .storage import Remote, is_uri, local_path, open_remote

log = logging.getLogger(__name__)

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}

# UTF-8 cannot encode U+D800-U+DFFF on their own: json.loads makes them from "\\ud800" escapes, and
# os.fsdecode from file-name bytes that are not UTF-8. One C-level scan finds them.
_SURROGATE = re.compile("[\ud800-\udfff]")

# What `stat` says a path is, for the reject of anything that is not a regular file.
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISDIR, "directory"),
)


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
    path: str  # as the OS spells it: a name that is not UTF-8 holds surrogate escapes
    format: str
    size: int  # bytes when the run listed it: a local file is read up to here, not further
    mtime: float
    error: str | None = None  # not readable or not a regular file: read_file rejects it
    remote: Remote | None = None  # set for object-store inputs (`path` is then the URI)

    @property
    def compressed(self) -> bool:
        return self.path.endswith(".gz")

    @property
    def display(self) -> str:
        """The path as valid Unicode, for the output's `source` and `doc_id` columns and messages
        (a Parquet string, a log line or a terminal cannot take a surrogate escape)."""
        return printable(self.path)


def stream_offsets(files: Sequence[InputFile]) -> list[int] | None:
    """Where each input starts in the input stream, in bytes, and (last) the stream's size:
    `len(files) + 1` offsets. An input that is a reject (`error`) holds no bytes to read. None
    when an input's size is unknown (-1): no offset after it, nor a total, can be known."""
    offsets = [0]
    for file in files:
        if file.error:
            size = 0
        elif file.size < 0:
            return None
        else:
            size = file.size
        offsets.append(offsets[-1] + size)
    return offsets


class ReadMeter:
    """How far reading an input stream (`files`, in this order) has got, in bytes, for
    progress: the inputs before the one being read, whole, plus what `read_file` has read of
    that one: the bytes the reader has taken from it (compressed bytes for `.gz`, which gzip
    takes 128 KB at a time) or, for Parquet, its size times the share of its rows read. Never
    past an input's listed size, never back. `bytes` is None when a size is unknown."""

    def __init__(self, files: Sequence[InputFile]) -> None:
        self.offsets = stream_offsets(files)
        self.begin(0)

    def begin(self, index: int) -> None:
        """Input `index` is read from now on (the ones before it are done)."""
        self.input, self._size, self._reached = index, -1, 0
        self._position: Callable[[], int] = lambda: 0

    def follow(self, file: InputFile, position: Callable[[], int]) -> None:
        """From now on `position()` says how many bytes of `file` (the current input) were read."""
        self._size, self._position = file.size, position

    def at(self, file: InputFile, position: int) -> None:
        """`position` bytes of `file` (the current input) have been read."""
        self.follow(file, lambda: position)

    @property
    def bytes(self) -> int | None:
        if self.offsets is None:
            return None
        try:
            position = self._position()
        except (OSError, ValueError):  # the stream is closed: it was read as far as it went
            position = self._reached
        if self._size >= 0:
            position = min(position, self._size)
        self._reached = max(self._reached, position)
        return self.offsets[self.input] + self._reached


def printable(text: str) -> str:
    """`text` with no lone surrogates: the bytes of a file name that is not UTF-8 (surrogate
    escapes) become `\\xNN`, any other lone surrogate `\\udNNN`. Valid text is returned as is."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file-name byte decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def file_format(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    return FORMATS.get(os.path.splitext(name)[1].lower())


def expand_inputs(inputs: Sequence[str]) -> tuple[list[InputFile], list[str]]:
    """Files from paths, directories (recursive, sorted) and globs, in a deterministic order.

    Returns the files and the paths skipped inside directories for an unknown extension (so the
    caller can report them); a named file with an unknown extension is an error. What cannot be
    read is an InputFile with `error` set, which read_file turns into one reject: an entry that
    cannot be stat-ed, a directory that cannot be listed, and anything that is not a regular
    file (a FIFO, a device, a socket), which is never opened, because reading it could block the
    run forever.
    """
    found = _Expansion()
    for given in inputs:
        if is_uri(given):
            _expand_remote(given, found.files, found.skipped)
            continue
        given = local_path(given)
        if any(c in given for c in "*?[") and not os.path.exists(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise InputError(f"{printable(given)}: the pattern matches no files")
            for match in matches:
                if os.path.isdir(match):
                    _walk(match, found.add, found.unreadable_directory)
                else:
                    found.add(match, named=True)
        elif os.path.isdir(given):
            before = len(found.files)
            _walk(given, found.add, found.unreadable_directory)
            if len(found.files) == before:
                raise InputError(
                    f"{printable(given)}: the directory holds no input files "
                    f"({', '.join(sorted(FORMATS))}, optionally .gz)"
                )
        elif os.path.exists(given):
            found.add(given, named=True)
        else:
            raise InputError(f"{printable(given)}: no such file or directory")
    return found.files, found.skipped


class _Expansion:
    """The files and skipped paths found so far, each real file once."""

    def __init__(self) -> None:
        self.files: list[InputFile] = []
        self.skipped: list[str] = []
        self.seen: set[str] = set()

    def rejected(self, path: str, fmt: str, error: str) -> None:
        # size -1 and mtime 0: a FIFO's or a device's times change as others use it, and the
        # recorded inputs must stay the same for the rerun to resume (or be a no-op).
        self.files.append(InputFile(path, fmt, -1, 0.0, error=error))
        log.warning(
            "%s: %s; it becomes a reject",
            printable(path),
            error,
            extra={"event": "rejected_file", "path": printable(path), "reason": error},
        )

    def add(self, path: str, named: bool) -> None:
        fmt = file_format(path)
        if fmt is None:
            if named:
                raise InputError(
                    f"{printable(path)}: unknown input format; expected one of "
                    f"{sorted(FORMATS)} (optionally .gz)"
                )
            self.skipped.append(path)  # logged by the run once the inputs are accepted
            return
        real = os.path.realpath(path)
        if real in self.seen:
            return
        self.seen.add(real)
        try:
            info = os.stat(path)  # follows links: a link to /dev/zero is a character device
        except OSError as e:
            if named:
                raise InputError(f"{printable(path)}: cannot read: {e.strerror}") from e
            # A broken link or a link loop inside a directory: reject it, keep the others.
            self.rejected(path, fmt, f"cannot read: {e.strerror}")
            return
        if not stat.S_ISREG(info.st_mode):
            self.rejected(path, fmt, f"not a regular file ({_kind(info.st_mode)})")
            return
        self.files.append(InputFile(path, fmt, info.st_size, info.st_mtime))

    def unreadable_directory(self, error: OSError) -> None:
        # The format names no reader: read_file rejects an InputFile with `error` before it
        # looks for one.
        path = os.fsdecode(error.filename) if error.filename is not None else "?"
        self.rejected(path, "directory", f"cannot read directory: {error.strerror or error}")


def _kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "unknown kind")


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


def _walk(directory: str, add, unreadable) -> None:
    visited: set[str] = set()
    # onerror: a directory that cannot be listed (permissions, I/O error) would otherwise be
    # passed over in silence, its documents neither read nor rejected.
    for root, dirs, names in os.walk(directory, followlinks=True, onerror=unreadable):
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


class _Prefix(io.RawIOBase):
    """The first `size` bytes of a local file: what was there when the run listed it. Bytes
    appended since (a log still being written) are left for the run that lists them, so that the
    documents read agree with the size the manifest records."""

    def __init__(self, raw: io.FileIO, size: int):
        self.raw, self.size, self.position = raw, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[: max(0, self.size - self.position)]
        count = self.raw.readinto(view) if len(view) else 0  # blocking: never None
        self.position += count
        return count

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(self.size - self.position):
            chunks.append(chunk)
        return b"".join(chunks)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # SEEK_END is relative to the listed size (Parquet's footer is found from the end).
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = self.raw.seek(base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Counted(io.RawIOBase):
    """An object-store stream that counts the bytes taken from it (it has no `tell`)."""

    def __init__(self, raw) -> None:
        self.raw, self.position = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        count = len(data)
        memoryview(buffer).cast("B")[:count] = data
        self.position += count
        return count

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_local(file: InputFile):
    """The local file, buffered and cut at its listed size. O_NONBLOCK, then fstat: should a
    FIFO or a device have taken the regular file's place since it was listed, this open does
    not wait for a writer, and it is refused before any read can block."""
    fd = os.open(file.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(_Prefix(raw, file.size), 1 << 20)


def _open_binary(file: InputFile, seekable: bool = False, meter: ReadMeter | None = None):
    """The input's bytes (gunzipped for .gz). `meter` follows the position in the input's own
    bytes (compressed, for .gz): what the reader has taken, not what the buffer read ahead."""
    if file.remote is not None:
        fs, path = file.remote.filesystem, file.remote.path
        if seekable and not file.compressed:
            raw = fs.open_input_file(path)  # random access, for Parquet footers
        else:
            # compression=None: pyarrow would otherwise gunzip .gz itself, and we do it below.
            # _Counted: the buffer's tell() needs the stream's, which pyarrow's streams lack.
            stream = _Counted(fs.open_input_stream(path, compression=None))
            raw = io.BufferedReader(stream, 1 << 20)
    else:
        raw = _open_local(file)
    if meter is not None:
        meter.follow(file, raw.tell)
    return gzip.GzipFile(fileobj=raw) if file.compressed else raw


class _Unreadable(OSError):
    """A reader cannot go on with the file (e.g. a corrupt Parquet page): the rest is a reject."""


def read_file(
    file: InputFile, options: ReadOptions, skip: int = 0, meter: ReadMeter | None = None
) -> Iterator[Document | Reject]:
    """Documents (and rejects) of one input file, in order, from item `skip` on. Errors that end
    the file early (a truncated .gz, an I/O error) come out as a Reject for the rest of the file,
    after what was read. Skipped items are counted without being decoded or parsed, so resuming
    in the middle of a large file costs a scan for line breaks (or Parquet row-group metadata),
    not a re-read of what is done. A local file is read up to the size it had when the run
    listed it (`file.size`): what is appended during the run is not read. `meter`, if given,
    follows the bytes read of the file (for progress)."""
    if file.error:  # before the reader: an unreadable directory has no reader
        if not skip:
            yield Reject(file.display, None, None, file.error)
        return
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}[file.format]
    count = 0  # items of the file so far, skipped ones included
    try:
        for item in reader(file, options, skip, meter):
            if isinstance(item, int):  # the reader passed over this many items before `skip`
                count += item
                continue
            count += 1
            yield item
    # ValueError/OverflowError: a Parquet value pyarrow cannot turn into Python (a timestamp id
    # out of range); the rest of that file is unreadable like after an I/O error.
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, OverflowError) as e:
        if count >= skip:  # else a resumed run: this reject was committed before
            # strerror, not str(e): the latter repeats the file name, which `source` holds.
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            yield Reject(
                file.display,
                None,
                None,
                printable(f"file unreadable after {count} documents: {detail}"),
            )


def _decode(data: bytes, options: ReadOptions) -> str:
    return data.decode("utf-8", errors=options.encoding_errors)


class _NotUnicode(ValueError):
    """A string holds a lone surrogate and encoding_errors is strict: its reason names where."""


def _unicode(value: str, what: str, options: ReadOptions) -> str:
    """`value` if it is valid Unicode; with encoding_errors "replace" each lone surrogate becomes
    U+FFFD, else _NotUnicode. Lone surrogates come from JSON escapes such as "\\ud800"; they cannot
    be encoded to UTF-8, so the Parquet writer would fail on them much later."""
    found = _SURROGATE.search(value)
    if found is None:
        return value
    if options.encoding_errors == "replace":
        return _SURROGATE.sub("\ufffd", value)
    raise _NotUnicode(
        f"{what} has a lone surrogate (U+{ord(found.group()):04X}) at character "
        f"{found.start()}; not valid Unicode"
    )


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192] and data.count(b"\x00") > len(data[:8192]) // 100


def _read_txt(
    file: InputFile, options: ReadOptions, skip: int, meter: ReadMeter | None
) -> Iterator[Document | Reject | int]:
    # Text decoded from bytes cannot hold a lone surrogate: no _unicode check needed here.
    if options.txt_mode == "file" and skip:
        yield 1  # the one document of the file is done: do not even open it
        return
    source = file.display
    with _open_binary(file, meter=meter) as f:
        if options.txt_mode == "file":
            data = f.read()
            if _looks_binary(data):
                yield Reject(source, source, None, "binary file (NUL bytes), not text")
                return
            try:
                yield Document(source, source, _decode(data, options))
            except UnicodeDecodeError as e:
                yield Reject(source, source, None, f"not valid UTF-8 at byte {e.start}")
            return
        for number, raw in enumerate(f, start=1):
            if number <= skip:
                yield 1
                continue
            raw = raw.rstrip(b"\r\n")
            doc_id = f"{source}:{number}"
            try:
                yield Document(doc_id, source, _decode(raw, options))
            except UnicodeDecodeError as e:
                yield Reject(source, doc_id, number, f"not valid UTF-8 at byte {e.start}")


def _read_jsonl(
    file: InputFile, options: ReadOptions, skip: int, meter: ReadMeter | None
) -> Iterator[Document | Reject | int]:
    items = 0  # non-blank lines: one document or reject each
    source = file.display
    with _open_binary(file, meter=meter) as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # written by Windows tools; json.loads refuses it
            if not raw.strip():
                continue
            items += 1
            if items <= skip:
                yield 1
                continue
            fallback_id = f"{source}:{number}"
            try:
                record = json.loads(_decode(raw, options))
            except UnicodeDecodeError as e:
                yield Reject(source, fallback_id, number, f"not valid UTF-8 at byte {e.start}")
                continue
            except json.JSONDecodeError as e:
                yield Reject(source, fallback_id, number, f"not valid JSON: {e.msg}")
                continue
            except RecursionError:  # "[[[[..." thousands deep: json's C parser gives up
                yield Reject(source, fallback_id, number, "not valid JSON: nested too deeply")
                continue
            except ValueError as e:  # e.g. an integer of more than 4300 digits (CPython's limit)
                yield Reject(source, fallback_id, number, f"not valid JSON: {e}")
                continue
            if not isinstance(record, dict):
                yield Reject(
                    source,
                    fallback_id,
                    number,
                    f"expected a JSON object, found {type(record).__name__}",
                )
                continue
            doc_id = fallback_id
            try:
                if options.id_field and record.get(options.id_field) is not None:
                    doc_id = _unicode(
                        str(record[options.id_field]), f"id field {options.id_field!r}", options
                    )
            except _NotUnicode as e:
                yield Reject(source, fallback_id, number, str(e))
                continue
            except ValueError as e:  # str() of an int beyond CPython's 4300-digit limit
                yield Reject(source, fallback_id, number, f"id field {options.id_field!r}: {e}")
                continue
            if options.text_field not in record:
                yield Reject(
                    source,
                    doc_id,
                    number,
                    printable(f"no {options.text_field!r} field (fields: {sorted(record)[:10]})"),
                )
                continue
            text = record[options.text_field]
            if not isinstance(text, str):
                yield Reject(
                    source,
                    doc_id,
                    number,
                    f"field {options.text_field!r} is {type(text).__name__}, not a string",
                )
                continue
            try:
                text = _unicode(text, f"text field {options.text_field!r}", options)
            except _NotUnicode as e:
                yield Reject(source, doc_id, number, str(e))
                continue
            yield Document(doc_id, source, text)


def _column_values(column, decode: bool) -> list:
    """A Parquet batch column as Python values, with string columns as `bytes` (to be decoded
    one by one): pyarrow's own decoding fails the whole batch on one value that is not UTF-8.
    `decode` False (the id): other types as pyarrow gives them; True (the text): None for
    anything that is neither string nor binary, which the reader rejects as not text."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):  # pandas categoricals: the values, not the codes
        column = column.dictionary_decode()
        kind = column.type
    # string -> binary is a view of the same buffers (zero-copy), and never validates UTF-8.
    if pa.types.is_string(kind):
        return column.view(pa.binary()).to_pylist()
    if pa.types.is_large_string(kind):
        return column.view(pa.large_binary()).to_pylist()
    if pa.types.is_string_view(kind):
        return column.view(pa.binary_view()).to_pylist()
    if (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_binary_view(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        return column.to_pylist()
    if decode:
        return [None] * len(column)
    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # a nested type with a bad string in it: the value where it can
        values = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except UnicodeDecodeError:
                values.append(None)  # no usable id: the row falls back to `<file>:<row>`
        return values


def _read_parquet(
    file: InputFile, options: ReadOptions, skip: int, meter: ReadMeter | None
) -> Iterator[Document | Reject | int]:
    """The documents of a Parquet input, row group by row group. (A little over 80 lines: the
    checks of a file, of its columns and of each group's rows read best in one place, in the
    order they happen.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = file.display
    with _open_binary(file, seekable=True) as f:
        data = io.BytesIO(f.read()) if file.compressed else f
        try:
            parquet = pq.ParquetFile(data)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants for bad files
            # One item, the file's reject: committed already when a resumed run skips past it.
            yield 1 if skip else Reject(source, None, None, f"not a readable Parquet file: {e}")
            return
        names = parquet.schema_arrow.names
        if options.text_field not in names:
            raise InputError(
                f"{source}: no column {options.text_field!r} (columns: {names}); "
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
            # A group that ends exactly at `skip` is read again: if reading it failed before,
            # the failure (the file's last item, a reject) must recur, not what follows it.
            if row + rows_in_group >= skip:
                break
            row += rows_in_group
            group += 1
        if row:
            yield row
        # Progress by rows: the file's size times the share of its rows read.
        rows = max(1, parquet.metadata.num_rows)
        if meter is not None:
            meter.at(file, file.size * row // rows)
        groups = range(group, parquet.num_row_groups)
        batches = parquet.iter_batches(batch_size=1024, columns=columns, row_groups=groups)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except pa.ArrowException as e:  # a corrupt page: the rest of the file is a reject
                raise _Unreadable(f"not a readable Parquet file: {e}") from e
            if meter is not None:
                meter.at(file, file.size * (row + batch.num_rows) // rows)
            if row < skip:
                passed = min(skip - row, batch.num_rows)
                batch = batch.slice(passed)
                row += passed
                yield passed
            texts = _column_values(batch.column(0), decode=True)
            ids = _column_values(batch.column(1), decode=False) if id_column else None
            # A string id column is decoded like the text; a binary one keeps str(bytes), as
            # before, so that outputs written from it keep their doc_ids.
            id_is_string = id_column is not None and _is_string(batch.column(1).type)
            for index, text in enumerate(texts):
                row += 1
                doc_id = f"{source}:{row}"
                if ids is not None and ids[index] is not None:
                    try:
                        doc_id = _parquet_id(ids[index], id_is_string, id_column, options)
                    except _NotUnicode as e:  # the reject keeps the `<file>:<row>` id
                        yield Reject(source, doc_id, row, str(e))
                        continue
                if isinstance(text, bytes):
                    try:
                        text = _decode(text, options)
                    except UnicodeDecodeError as e:
                        yield Reject(source, doc_id, row, f"not valid UTF-8 at byte {e.start}")
                        continue
                if not isinstance(text, str):
                    yield Reject(
                        source, doc_id, row, f"column {options.text_field!r} is null or not text"
                    )
                    continue
                yield Document(doc_id, source, text)


def _is_string(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _parquet_id(value: object, from_string: bool, column: str, options: ReadOptions) -> str:
    """A Parquet id value as a str; _NotUnicode naming the column if it is not valid Unicode."""
    if from_string:
        try:
            value = _decode(value, options)
        except UnicodeDecodeError as e:
            raise _NotUnicode(f"id column {column!r}: not valid UTF-8 at byte {e.start}") from e
    return _unicode(str(value), f"id column {column!r}", options)
