"""One annotate run per output: the `_lock` file, an flock locally, a marker object remotely.

Deliberately not here: what a run does under the lock (plan.py, committer.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from .errors import OutputError
from .output import LOCK, OutputDir

log = logging.getLogger(__name__)


class RunLock:
    """One run per output, held in `_lock` (which names the holder's pid and host).

    Locally the lock is an flock on `_lock`: the kernel releases it when the holder dies (kill -9
    included), so a stale file is simply taken, and two runs that start at once on one are
    serialised by the kernel instead of each checking and then writing. A file that names a live
    process on this host without being flocked (a run of a version that did not flock) is
    respected. An object store has no locks: there the check and the write are two requests,
    which stops a second run started later, not two started within the same second (cron's and
    Airflow's own locks cover that).
    """

    def __init__(self, out: OutputDir):
        self.out = out
        self.fd: int | None = None
        self.me = f"{os.getpid()}@{socket.gethostname()}"

    def __enter__(self) -> RunLock:
        if self.out.local:
            self._lock_local(self.out.local / LOCK)
        else:
            self._lock_remote()
        return self

    def _lock_local(self, path: Path) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot create the lock {path}: {e.strerror or e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._held(_read_holder(path, wait=True)) from None
            except OSError as e:  # ENOLCK, EOPNOTSUPP: a filesystem without locks
                os.close(fd)
                raise OutputError(
                    f"cannot lock {path}: {e.strerror or e} (a filesystem without file locks; "
                    "write the output to a local disk or an object store)"
                ) from e
            # The run that held it may have unlinked the file between our open and our flock
            # (and a third run created a new one): then our lock is on a dead inode; try again.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        try:
            self._take(fd, path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _take(self, fd: int, path: Path) -> None:
        """Under the flock: refuse a live holder of an older kind, else write ourselves in."""
        holder = _read_holder(path)
        pid, _, host = holder.partition("@")
        if holder:
            # A live annotate run of a version that did not flock. Not this process (we hold
            # the flock: the file is stale, e.g. pid 1 of a restarted container) and not an
            # unrelated process that reuses a dead run's pid.
            if host == socket.gethostname() and pid.isdigit() and _is_annotate_run(int(pid)):
                raise self._held(holder)
            log.warning("taking over the lock of a stopped run (%s)", holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.me.encode(), 0)

    def _held(self, holder: str) -> OutputError:
        pid, _, host = holder.partition("@")
        return OutputError(
            f"{self.out} is being written by another annotate run "
            f"(pid {pid or '?'} on {host or '?'}); wait for it or stop it"
        )

    def _lock_remote(self) -> None:
        try:
            holder = (self.out.read_bytes(LOCK) or b"").decode(errors="replace").strip()
            pid, _, host = holder.partition("@")
            if holder:
                if not (host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))):
                    raise OutputError(
                        f"{self._held(holder)}; if no run is alive (a killed run on another "
                        f"host), delete {self.out.uri(LOCK)}"
                    )
                log.warning("taking over the lock of a crashed run (pid %s)", pid)
            self.out.write_bytes(LOCK, self.me.encode())
        except OSError as e:
            raise OutputError(f"cannot take the lock {self.out.uri(LOCK)}: {e}") from e

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            # Unlink while still holding the flock: a run waiting on this inode sees that it is
            # no longer `_lock` and starts over on a new file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.out.local / LOCK)
            os.close(self.fd)
            self.fd = None
        else:
            self.out.remove(LOCK)


def _read_holder(path: Path, wait: bool = False) -> str:
    """The `pid@host` in a lock file ('' when empty or unreadable). With `wait`, give a run that
    has just taken the lock a moment to write itself in."""
    for _ in range(20 if wait else 1):
        try:
            holder = path.read_bytes().decode(errors="replace").strip()
        except OSError:
            holder = ""
        if holder or not wait:
            return holder
        time.sleep(0.05)
    return ""


def _is_annotate_run(pid: int) -> bool:
    """Whether `pid` is another live process that runs nerbatch (its command line says so)."""
    if pid == os.getpid() or not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): a live pid is respected, as before
    return b"nerbatch" in command or b"ner_batch" in command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
