"""The run core that both annotate engines share: configuration, the output's lock, the stop
flag, preparing (or continuing) an output, and the `Committer` that owns what a run writes.

An engine (annotate.py on this machine, ray_engine.py on a Ray cluster) turns documents into spans;
everything else is here, so the two write the same parts, rejects, counts and manifest, and an
output started by one is resumed by the other. The commit protocol: a part's rows are published
(renamed into place), then its rejects, then the manifest that names both; the manifest also
records where in the input stream the committed documents end (`position`), so a resumed run
starts reading there. `_SUCCESS` is written last, after the manifest says complete.

Deliberately not here: reading (readers.py), tagging (tagger.py), the storage layer (output.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from . import __version__
from .choices import ENGINES, RUNTIMES
from .errors import InputError, Interrupted, OptionError, OutputError
from .output import (
    MANIFEST,
    MANIFEST_FORMAT,
    REJECTS,
    SUCCESS,
    OutputDir,
    PartWriter,
    read_manifest,
    write_manifest,
    write_rejects,
)
from .readers import FORMATS, InputFile, ReadOptions, Reject, expand_inputs, printable
from .storage import local_path
from .tagger import Span, TaggerOptions

log = logging.getLogger(__name__)

LOCK = "_lock"
_TAGGING = TaggerOptions()  # the defaults the config repeats by name, not by value


@dataclass
class RayOptions:
    """Where and how wide `engine="ray"` runs (see ray_engine.py)."""

    address: str | None = None  # None: RAY_ADDRESS, a running local cluster, or a new one
    num_workers: int | None = None  # tagging actors; None: as many as the cluster's CPUs/GPUs fit
    cpus_per_worker: int = 1  # CPUs each actor reserves = its ONNX Runtime threads
    gpus_per_worker: float | None = None  # None: 1 with device "cuda", else 0


@dataclass
class AnnotateConfig:
    inputs: list[str]
    output: str
    model: str = "export/minilm"
    variant: str = "auto"
    device: str = "cpu"
    batch_size: int = _TAGGING.batch_size
    max_batch_tokens: int = _TAGGING.max_batch_tokens
    segment: str = _TAGGING.segment  # context boundaries: see choices.SEGMENTS
    max_length: int | None = None  # default: the bundle's
    stride: int | None = None
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    streams: int = _TAGGING.streams  # batches run at once, each on threads / streams cores
    read: ReadOptions = field(default_factory=ReadOptions)
    chunk_docs: int = 2048  # documents tokenised and tagged together (sorted by length)
    # ... or fewer, when they are long: 0.5 MB of text (about 115k sub-tokens) is plenty to sort
    # into full batches; 2 MB peaked 43% higher (tiny model, 5 MB corpus: 524 vs 366 MB).
    chunk_chars: int = 500_000
    part_docs: int = 20_000  # documents per committed part (the most work a crash redoes)
    overwrite: bool = False
    engine: str = "local"  # "local" (annotate.py) or "ray" (ray_engine.py)
    ray: RayOptions = field(default_factory=RayOptions)
    runtime: str = "auto"  # "onnxruntime", "openvino" or "auto" (timed at start: probe.py)

    def tagger_options(self) -> TaggerOptions:
        return TaggerOptions(self.batch_size, self.max_batch_tokens, self.segment, self.streams)

    def check(self) -> None:
        """Refuse an option out of its range before any work, naming the range (OptionError).
        What depends on the bundle (the window against its positions) is checked when the
        bundle is loaded."""
        if self.engine not in ENGINES:
            raise OptionError(f"unknown engine {self.engine!r}; expected one of {list(ENGINES)}")
        if self.runtime not in RUNTIMES:
            raise OptionError(f"unknown runtime {self.runtime!r}; expected one of {list(RUNTIMES)}")
        minimum = {
            "batch_size": 1,
            "max_batch_tokens": 1,
            "streams": 0,
            "part_docs": 1,
            "chunk_docs": 1,
            "chunk_chars": 1,
            "threads": 0,
            "max_length": 1,
            "stride": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("max_length", "stride"):
                continue  # the bundle's
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                option = "--" + name.replace("_", "-")
                raise OptionError(f"{option} must be an integer >= {low}, not {value!r}")
        try:
            self.read.check()
        except ValueError as e:
            raise OptionError(str(e)) from e


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


class StopFlag:
    """SIGTERM / SIGINT set a flag that the engine checks between chunks (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread (an Airflow worker thread) handlers cannot be set.
            with contextlib.suppress(ValueError):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def chunk_is_full(documents: int, chars: int, chunk_docs: int, chunk_chars: int) -> bool:
    """Whether a chunk of documents to tag together is full: `chunk_docs` documents, or fewer
    when they are long (`chunk_chars` characters). Both engines cut their chunks with this."""
    return documents >= chunk_docs or chars >= chunk_chars


def tag_in_chunks(
    tagger, texts: list[str], chunk_docs: int, chunk_chars: int, part_docs: int | None = None
) -> Iterator[tuple[int, list[Span]]]:
    """(sub-tokens, spans) of each text, tagged in the chunks the local engine forms for a
    stream of these texts: cut by `chunk_is_full`, and at multiples of `part_docs` (where the
    engine's parts end). The Ray workers and the in-memory API (`ner_batch.load`) tag with it."""
    start = 0
    while start < len(texts):
        end, chars = start, 0
        stop = (
            len(texts)
            if part_docs is None
            else min(len(texts), (start // part_docs + 1) * part_docs)
        )
        while end < stop and not chunk_is_full(end - start, chars, chunk_docs, chunk_chars):
            chars += len(texts[end])
            end += 1
        chunk = texts[start:end]
        encoded = tagger.encoder.encode_batch(chunk)
        predictions = tagger.predict(encoded)
        for text, enc, prediction in zip(chunk, encoded, predictions, strict=True):
            yield len(enc), tagger.spans(text, prediction)
        start = end


# --- preparing an output -------------------------------------------------------------------------


def run_settings(
    config: AnnotateConfig, variant: str, max_length: int, stride: int, runtime: str
) -> dict:
    """What an output is bound to: resuming it with other settings would mix two kinds of rows.

    The batching settings are among them: dynamic int8 quantisation scales each batch tensor as
    a whole, so a span's score (and, rarely, its label) depends on which windows share its
    batch. Batches are formed inside chunks whose bounds follow from these settings and the
    input alone, and runs commit only at chunk bounds, so a resumed run forms the batches of an
    uninterrupted one, as long as these do not change. The runtime is one of them: OpenVINO's
    and ONNX Runtime's logits differ (a resumed `--runtime auto` run takes the recorded one)."""
    return {
        "variant": variant,
        "runtime": runtime,
        "max_length": max_length,
        "stride": stride,
        "segment": config.segment,
        "read": asdict(config.read),
        "batch_size": config.batch_size,
        "max_batch_tokens": config.max_batch_tokens,
        "chunk_docs": config.chunk_docs,
        "chunk_chars": config.chunk_chars,
        "part_docs": config.part_docs,
        "device": config.device,
        # Ray Data forms its own batches: quantised rows of one engine differ from the other's.
        # fp32 rows do not depend on batches, so either engine resumes the other's fp32 output.
        "engine": "any" if variant == "fp32" else config.engine,
    }


# Settings that outputs of nerbatch 0.1 did not record: such an output resumes with whatever
# this run uses (0.1 did not keep int8 batches across a resume either); then they are recorded.
_UNRECORDED_BEFORE = ("batch_size", "max_batch_tokens", "chunk_docs", "chunk_chars", "part_docs")
_UNRECORDED_BEFORE += ("device", "engine")


def input_files(config: AnnotateConfig, out: OutputDir) -> tuple[list[InputFile], list[str]]:
    """The input files in stream order (and the paths skipped), never the output itself."""
    files, skipped = expand_inputs(config.inputs)
    # An output inside an input directory must not become an input of its own next run.
    files = [f for f in files if not _is_within(f.path, out)]
    if not files:
        raise InputError("no input files")
    return files, skipped


def _log_skipped(skipped: list[str]) -> None:
    for path in map(printable, skipped):
        log.info(
            "%s: skipped, not an input format (%s, optionally .gz)",
            path,
            ", ".join(sorted(FORMATS)),
            extra={"event": "skipped_file", "path": path},
        )


def _is_within(path: str, out: OutputDir) -> bool:
    if out.local is None:
        return path == out.location or path.startswith(out.location + "/")
    return Path(os.path.realpath(local_path(path))).is_relative_to(os.path.realpath(out.local))


def make_output_dir(out: OutputDir) -> None:
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory; choose another output")
        out.mkdir()
    except OSError as e:  # a read-only place, a path through a file, a vanished mount, ...
        raise OutputError(f"cannot create the output {out}: {e.strerror or e}") from e


def _inputs_record(files: list[InputFile]) -> list[dict]:
    return [{"path": f.path, "size": f.size, "mtime": f.mtime} for f in files]


# What annotate writes into an output, by name; `--overwrite` removes these and nothing else.
_PART = r"part-\d{5,}\.parquet"
_OURS = re.compile(
    rf"({_PART}|_manifest\.json|_SUCCESS|_lock|\.({_PART}|_manifest\.json|_SUCCESS)\.tmp)"
)
_OURS_IN_REJECTS = re.compile(rf"{_PART}|\.{_PART}\.tmp")


def _foreign_files(out: OutputDir) -> list[str]:
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


def _refuse_foreign_files(out: OutputDir) -> None:
    """--overwrite deletes an annotate output only: refuse, listing them, when the output holds
    anything annotate does not write (a wrong directory must not lose a user's files). The
    manifest is not read: it may be the corrupt one that --overwrite is meant to get rid of."""
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:10]) + (
            f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        )
        raise OutputError(
            f"{out} holds files that nerbatch annotate did not write ({shown}); --overwrite "
            "deletes only an annotate output: move them away or choose another output"
        )


def _remove_unrecorded(out: OutputDir, manifest: dict) -> None:
    """Remove our files that `manifest` does not name: every part and reject file of the output
    that --overwrite replaces, or a part published just before a crash, before its manifest
    (the resumed run writes it again), and temporaries. Called once the manifest is on disk, so
    that a kill at any point leaves an output that the same command completes."""
    parts = {p["file"] for p in manifest["parts"]}
    rejects = {p["rejects_file"] for p in manifest["parts"] if p.get("rejects_file")}
    for name in out.names():
        if name == REJECTS:
            for entry in out.names(REJECTS):
                if f"{REJECTS}/{entry}" not in rejects and _OURS_IN_REJECTS.fullmatch(entry):
                    out.remove(f"{REJECTS}/{entry}")
        elif _OURS.fullmatch(name) and name not in parts and name not in (MANIFEST, LOCK, SUCCESS):
            out.remove(name)


def _hold_grown_inputs(manifest: dict, files: list[InputFile]) -> None:
    """A local input appended to since the output was started (larger, not older) is read up to
    the size recorded then, as the run that started it read it: its files keep that size and
    mtime, so the rerun of a complete output is a no-op and a resumed one reads the same bytes.
    What was appended is not annotated into this output (start another one for it)."""
    recorded = {i["path"]: i for i in manifest.get("inputs", [])}
    fingerprints = manifest.get("fingerprints") or {}
    for file in files:
        before = recorded.get(file.path)
        if file.remote is not None or file.error or before is None or before["size"] < 0:
            continue
        if (
            file.size > before["size"]
            and file.mtime >= before["mtime"]
            # the recorded bytes are still there (else it was rewritten, not appended to)
            and fingerprints.get(file.path) is not None
            and fingerprints[file.path] == _fingerprint(file.path, before["size"])
        ):
            log.warning(
                "%s grew from %d to %d bytes since this output was started: reading its first "
                "%d bytes, as the run that started it did",
                file.display,
                before["size"],
                file.size,
                before["size"],
                extra={"event": "input_grew", "path": file.display},
            )
            file.size, file.mtime = before["size"], before["mtime"]


def _fingerprint(path: str, size: int) -> str | None:
    """sha256 of the first and the last 64 KiB of a local file's first `size` bytes: enough to
    tell an input that was appended to from one that was rewritten."""
    import hashlib

    block = 1 << 16
    try:
        with open(path, "rb") as f:
            head = f.read(min(block, size))
            f.seek(max(0, size - block))
            tail = f.read(min(block, size))
    except OSError:
        return None
    return hashlib.sha256(head + b"|" + tail).hexdigest()


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp") and bool(_OURS.fullmatch(name))


def _check_same_run(out: OutputDir, manifest: dict, inputs: list[dict], bundle_id: str, settings):
    """Refuse to continue an output that another bundle, other settings or other inputs wrote."""
    if manifest.get("bundle_id") != bundle_id:
        raise OutputError(
            f"{out} was written with bundle {manifest.get('bundle_id')!r}, not {bundle_id!r}; "
            "pass --overwrite to start over"
        )
    # Resuming with another variant, window or reader would mix two kinds of rows in one
    # output (and other reader options change which document the resume position points at).
    old_settings = dict(manifest.get("settings", settings))
    for key in _UNRECORDED_BEFORE:
        old_settings.setdefault(key, settings[key])
    old_settings.setdefault("runtime", "onnxruntime")  # the only one before 0.3
    if old_settings != settings:
        changed = [k for k in settings if old_settings.get(k) != settings[k]]
        raise OutputError(
            f"{out} was written with other settings ("
            + ", ".join(f"{k} {old_settings.get(k)!r}, now {settings[k]!r}" for k in changed)
            + "); run with the same options to resume it, or pass --overwrite to start over"
        )
    if manifest.get("inputs") != inputs:
        old = {i["path"]: i for i in manifest.get("inputs", [])}
        new = {i["path"]: i for i in inputs}
        changed_inputs = sorted(set(old) ^ set(new)) + sorted(
            p for p in set(old) & set(new) if old[p] != new[p]
        )
        raise OutputError(
            f"{out}: the inputs changed since the run that wrote it (e.g. {changed_inputs[0]}: "
            "added, removed, or a different size or mtime); pass --overwrite to start over"
        )


def _new_manifest(
    config: AnnotateConfig,
    bundle_id: str,
    settings: dict,
    files: list[InputFile],
    skipped: list[str],
    runtime_choice: dict | None = None,
) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "bundle_id": bundle_id,
        "bundle": str(config.model),
        "variant": settings["variant"],
        "device": config.device,
        "settings": settings,
        "runtime_choice": runtime_choice,  # what --runtime chose and why (probe.py)
        "inputs": _inputs_record(files),
        # Local inputs only: whether an input that later grew still starts with these bytes.
        "fingerprints": {
            f.path: _fingerprint(f.path, f.size)
            for f in files
            if f.remote is None and not f.error and f.size >= 0
        },
        "skipped_files": skipped,
        "options": {
            k: v for k, v in asdict(config).items() if k not in ("inputs", "output", "overwrite")
        },
        "files": {
            "read": sum(1 for f in files if not f.error),
            "rejected": sum(1 for f in files if f.error),
            "skipped": len(skipped),
        },
        "parts": [],
        "documents_done": 0,
        "counts": {"documents": 0, "annotated": 0, "rejected": 0, "spans": 0, "tokens": 0},
        "complete": False,
        "versions": {"nerbatch": __version__},
        "started": _now(),
        "runs": 0,
    }


def prepare_run(
    out: OutputDir,
    config: AnnotateConfig,
    bundle_id: str,
    settings: dict,
    files: list[InputFile],
    skipped: list[str],
    runtime_choice: dict | None = None,
) -> dict | None:
    """Under the output's lock: the manifest this run continues (the output's, or a new one),
    or None when the output is already complete and there is nothing to do."""
    manifest = None
    if config.overwrite:
        _refuse_foreign_files(out)
    else:
        manifest = read_manifest(out)
        # Only our lock and temporaries: a run killed before it wrote its first manifest.
        leftovers = [n for n in out.names() if n != LOCK and not _is_temporary(n)]
        if manifest is None and leftovers:
            raise OutputError(
                f"{out} exists, is not empty and is not an annotate output; choose another "
                "output or pass --overwrite"
            )
        if manifest is not None:
            _hold_grown_inputs(manifest, files)
            _check_same_run(out, manifest, _inputs_record(files), bundle_id, settings)
            manifest["settings"] = settings  # the same, with what older versions left out
    if manifest and manifest.get("complete") and out.exists(SUCCESS):
        log.info("output is already complete: nothing to do", extra={"event": "noop"})
        return None
    if manifest is None:
        manifest = _new_manifest(config, bundle_id, settings, files, skipped, runtime_choice)
    manifest["runs"] += 1
    try:
        out.remove(SUCCESS)
        # Written now, before any document is read: an output killed at any moment from here on
        # is one that the same command resumes (--overwrite: starts afresh, old parts unnamed).
        write_manifest(out, manifest)
        _remove_unrecorded(out, manifest)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from e
    if manifest["documents_done"]:
        log.info(
            "resuming after %d documents (%d parts)",
            manifest["documents_done"],
            len(manifest["parts"]),
            extra={"event": "resume", "documents_done": manifest["documents_done"]},
        )
    return manifest


@contextlib.contextmanager
def prepared_output(
    config: AnnotateConfig, bundle_id: str, settings: dict, runtime_choice: dict | None = None
) -> Iterator[tuple[OutputDir, list[InputFile], dict | None]]:
    """The output, its input files and, under its lock, the manifest to continue (None when
    the output is already complete): what both engines do before any document is read."""
    out = OutputDir(config.output)
    files, skipped = input_files(config, out)
    make_output_dir(out)
    with RunLock(out):
        manifest = prepare_run(out, config, bundle_id, settings, files, skipped, runtime_choice)
        if manifest is not None:
            _log_skipped(skipped)
            if runtime_choice:
                log_runtime(runtime_choice)
        yield out, files, manifest


def log_runtime(choice: dict) -> None:
    log.info(
        "runtime %s: %s",
        choice["runtime"],
        choice["reason"],
        extra={"event": "runtime", **{k: v for k, v in choice.items() if k != "reason"}},
    )


def recorded_runtime(config: AnnotateConfig) -> str | None:
    """The runtime the output records, for a `--runtime auto` run that resumes it (its rows
    stay those of one runtime); None for a new output or --overwrite."""
    if config.overwrite:
        return None
    manifest = read_manifest(OutputDir(config.output))
    if manifest is None:
        return None
    return manifest.get("settings", {}).get("runtime", "onnxruntime")


def complete_summary(out: OutputDir) -> dict:
    """The summary of an output that was already complete."""
    return dict(read_manifest(out)["summary"], already_complete=True)


def resume_point(manifest: dict) -> tuple[int, int, int]:
    """Where the remaining work starts: (input index, documents of that input to skip while
    reading it, documents of the stream read from there to drop after that).

    A commit records its position; when a manifest has none, or an older one (written by a
    version that did not record it), the difference is dropped from the stream instead."""
    done = manifest["documents_done"]
    position = manifest.get("position")
    if position and position["documents_done"] <= done:
        return position["input"], position["items"], done - position["documents_done"]
    return 0, 0, done


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- committing ----------------------------------------------------------------------------------

Position = tuple[int, int]  # (input index, items of that input read through this document)


class Committer:
    """What one run writes: the open part and its rejects, the counts, the manifest, the
    resume position and the progress bar. An engine adds documents (annotated, with spans, or
    rejected) in stream order and calls `commit` at part boundaries and `finish` at the end.

    Use it as a context manager: an error aborts the open part (never half-published), and an
    OSError (disk full, a vanished mount) becomes an OutputError that says the output stays
    resumable."""

    def __init__(
        self, out: OutputDir, manifest: dict, model_id: str, part_docs: int, silent: bool = True
    ):
        self.out = out
        self.manifest = manifest
        self.model_id = model_id
        self.part_docs = part_docs
        self.silent = silent
        self.part: PartWriter | None = None
        self.rejects: list[Reject] = []
        self.counts = _zero_counts()  # of the open part
        self.last: Position | None = None  # of the last document added to the open part
        self.started = time.monotonic()
        self.run_docs = 0
        self.run_tokens = 0
        self.progress = None

    def __enter__(self) -> Committer:
        from tqdm import tqdm

        self.progress = tqdm(
            unit="doc", disable=True if self.silent else None, desc="annotate", dynamic_ncols=True
        )
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.progress.close()
        if error is None:
            return
        if self.part is not None:
            with contextlib.suppress(OSError):  # the disk may still be full
                self.part.abort()
            self.part = None
        if isinstance(error, OSError):
            # Readers turn their own I/O errors into rejects: this is a write (disk full, a
            # vanished mount, a read-only directory).
            raise OutputError(
                f"cannot write to {self.out}: {error.strerror or error}; the output stays "
                "resumable from the last committed part once the problem is fixed"
            ) from error

    @property
    def documents_in_part(self) -> int:
        return self.counts["annotated"] + self.counts["rejected"]

    @property
    def part_size(self) -> int:
        """Documents of the open part when full. Parts end at multiples of `part_docs` in the
        input stream, whatever was committed before (a part committed on SIGTERM is short): the
        bounds of parts, and so of tagging chunks, do not depend on where a run was stopped."""
        return self.part_docs - self.manifest["documents_done"] % self.part_docs

    @property
    def room(self) -> int:
        """Documents the open part takes before it is full."""
        return self.part_size - self.documents_in_part

    def _open(self, position: Position | None) -> None:
        if self.part is None:
            name = f"part-{len(self.manifest['parts']):05d}.parquet"
            self.part = PartWriter.in_output(self.out, name)
        if position is not None:
            self.last = position if self.last is None else max(self.last, position)

    def add(
        self, doc_id: str, source: str, text: str, spans: list[Span], tokens: int, position
    ) -> None:
        """An annotated document and its spans."""
        self._open(position)
        self.part.add(doc_id, source, text, spans, self.model_id)
        self._count(annotated=1, spans=len(spans), tokens=tokens)

    def add_table(self, spans: pa.Table, documents: int, tokens: int, position) -> None:
        """Span rows (output.SPAN_SCHEMA) of `documents` annotated documents made elsewhere."""
        self._open(position)
        self.part.add_table(spans)
        self._count(annotated=documents, spans=spans.num_rows, tokens=tokens)

    def reject(self, reject: Reject, position) -> None:
        """A document that could not be read or decoded."""
        self._open(position)
        self.rejects.append(reject)
        self._count(rejected=1)

    def _count(self, annotated: int = 0, rejected: int = 0, spans: int = 0, tokens: int = 0):
        c = self.counts
        c["annotated"] += annotated
        c["rejected"] += rejected
        c["spans"] += spans
        c["tokens"] += tokens
        self.run_docs += annotated + rejected
        self.progress.update(annotated + rejected)

    def commit(self) -> None:
        """Publish the open part (an empty one too): rows, then its rejects, then the manifest
        that names both and the position where its documents end."""
        self._open(None)
        try:
            rows = self.part.commit()
            rejects_file = None
            if self.rejects:
                self.out.mkdir(REJECTS)
                rejects_file = f"{REJECTS}/{self.part.name}"
                write_rejects(self.out, rejects_file, self.rejects)
        except OSError as e:
            raise OutputError(
                f"cannot write {self.out.uri(self.part.name)}: {e.strerror or e}; the output "
                "stays resumable from the last committed part once the problem is fixed"
            ) from e
        m = self.manifest
        documents = self.documents_in_part
        m["parts"].append(
            {"file": self.part.name, "rejects_file": rejects_file, "rows": rows}
            | {"documents": documents, **self.counts}
        )
        m["documents_done"] += documents
        m["counts"]["documents"] += documents
        for key, value in self.counts.items():
            m["counts"][key] += value
        if self.last is not None:
            input_index, items = self.last
            m["position"] = {
                "documents_done": m["documents_done"],
                "input": input_index,
                "items": items,
            }
        m["updated"] = _now()
        self.run_tokens += self.counts["tokens"]
        write_manifest(self.out, m)
        log.info(
            "committed %s: %d documents, %d spans",
            self.part.name,
            documents,
            rows,
            extra={
                "event": "part",
                "part": self.part.name,
                "documents": m["counts"]["documents"],
                "rejected": m["counts"]["rejected"],
                "spans": m["counts"]["spans"],
            },
        )
        self.part, self.rejects, self.counts, self.last = None, [], _zero_counts(), None

    def interrupted(self, signum: int) -> Interrupted:
        return Interrupted(
            f"stopped by {signal.Signals(signum).name} after "
            f"{self.manifest['documents_done']} documents; run the same command again to resume"
        )

    def finish(self) -> dict:
        """Commit what is open (or one empty part, for an output with no documents), mark the
        manifest complete with the run summary, write _SUCCESS; returns the summary."""
        m = self.manifest
        if self.part is not None or not m["parts"]:
            self.commit()
        elapsed = time.monotonic() - self.started
        counts = m["counts"]
        m["summary"] = {
            "output": str(self.out),
            "documents": counts["documents"],
            "annotated": counts["annotated"],
            "rejected": counts["rejected"],
            "spans": counts["spans"],
            "tokens": counts["tokens"],
            "parts": len(m["parts"]),
            "seconds": round(elapsed, 2),
            "documents_this_run": self.run_docs,
            "tokens_per_second": round(self.run_tokens / elapsed, 1) if elapsed > 0 else None,
            "bundle_id": m["bundle_id"],
            "variant": m["variant"],
            "runtime": m["settings"].get("runtime", "onnxruntime"),
            "files": m.get("files"),
        }
        if counts["documents"] != counts["annotated"] + counts["rejected"]:
            raise OutputError(f"accounting mismatch in {self.out}: {counts}")  # a bug if seen
        m["complete"] = True
        m["finished"] = _now()
        m["rejects"] = REJECTS if any(p.get("rejects_file") for p in m["parts"]) else None
        write_manifest(self.out, m)
        self.out.write_bytes(SUCCESS, b"")
        log.info("done", extra={"event": "done", **m["summary"]})
        return dict(m["summary"])


def _zero_counts() -> dict[str, int]:
    return {"annotated": 0, "rejected": 0, "spans": 0, "tokens": 0}
