"""Local paths and object-store URIs.

A location is either a local path (handled with `os`, so that writes can be fsynced and renamed)
or a URI such as `s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://host/path` (any scheme that
`pyarrow.fs.FileSystem.from_uri` knows) or, when fsspec and the scheme's package are installed,
any fsspec scheme (`az://`, `gcs://`, ...). `file://` URIs are local paths.

Credentials never pass through nerbatch: each filesystem reads its usual sources (for S3:
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE` and
`~/.aws/config`, instance roles, and `AWS_ENDPOINT_URL` for S3-compatible servers such as MinIO).
Locations are logged as given, so do not put secrets in URIs.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import InputError, OutputError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    """True for `scheme://...` other than `file://` (which is a local path)."""
    return bool(_URI.match(location)) and not location.startswith("file://")


def local_path(location: str) -> str:
    """The local path of a plain path or a `file://` URI."""
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return location


@dataclass(frozen=True)
class Remote:
    """A location on a (pyarrow) filesystem: `path` is what that filesystem calls it."""

    uri: str
    filesystem: object  # pyarrow.fs.FileSystem; picklable, so it travels to Ray workers
    path: str

    def child(self, name: str) -> Remote:
        return Remote(f"{self.uri.rstrip('/')}/{name}", self.filesystem, f"{self.path}/{name}")


def open_remote(uri: str) -> Remote:
    """Resolve a URI to its filesystem; an unknown scheme or a missing package is an error."""
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except Exception as first:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        try:
            import fsspec
        except ImportError:
            raise InputError(
                f"{uri}: pyarrow cannot open this URI ({first}); `pip install fsspec` and the "
                "filesystem's package (e.g. s3fs, gcsfs, adlfs) for more schemes"
            ) from first
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise InputError(f"{uri}: no filesystem for this URI ({e})") from e
        filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Remote(uri.rstrip("/"), filesystem, path.rstrip("/"))


def copy_to_local(remote: Remote, destination: str) -> None:
    """Download one object to a local file (written under a temporary name, then renamed)."""
    import os
    import shutil

    # A name of this process's own: Ray actors on one node fill the same bundle cache at once.
    tmp = f"{destination}.{os.getpid()}.part"
    with (
        remote.filesystem.open_input_stream(remote.path, compression=None) as src,
        open(tmp, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, destination)


def write_file(location: str | os.PathLike, data: bytes | str) -> None:
    """Write one whole file (a `str` as UTF-8) to a local path or an object-store URI: a reader
    sees the old file or the new one, never a part of it.

    A local file is written beside its destination under a temporary name of this process,
    fsynced, then renamed over it (its directories are created first); the temporary file never
    outlives a failure. An object appears when its upload completes. Raises OutputError naming
    the location.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    location = os.fspath(location)
    try:
        if is_uri(location):
            remote = open_remote(location)
            with remote.filesystem.open_output_stream(remote.path) as f:
                f.write(data)
            return
        path = local_path(location)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {location}: {e.strerror or e}") from e
