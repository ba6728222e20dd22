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
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from . import __version__
from .choices import ENGINES
from .errors import InputError, Interrupted, OutputError
from .output import (
    MANIFEST_FORMAT,
    REJECTS,
    SUCCESS,
    OutputDir,
    PartWriter,
    read_manifest,
    write_manifest,
    write_rejects,
)
from .readers import InputFile, ReadOptions, Reject, expand_inputs
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

    def tagger_options(self) -> TaggerOptions:
        return TaggerOptions(self.batch_size, self.max_batch_tokens, self.segment, self.streams)

    def check(self) -> None:
        """Refuse an unknown engine or reader option before any work (OutputError/InputError
        carry the message to the CLI's one Error: line)."""
        if self.engine not in ENGINES:
            raise InputError(f"unknown engine {self.engine!r}; expected one of {list(ENGINES)}")
        try:
            self.read.check()
        except ValueError as e:
            raise InputError(str(e)) from e


class RunLock:
    """One run per output: `_lock` holds pid and host; a lock whose process is gone is taken.

    Locally the lock file is created exclusively (O_EXCL). An object store has no such create, so
    there the check and the write are two requests: it stops a second run started later, not
    two started within the same second (cron's and Airflow's own locks cover that).
    """

    def __init__(self, out: OutputDir):
        self.out = out

    def __enter__(self) -> RunLock:
        me = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(2):
            try:
                self._create(me)
            except FileExistsError:
                holder = (self.out.read_bytes(LOCK) or b"").decode(errors="replace").strip()
                pid, _, host = holder.partition("@")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    log.warning("taking over the lock of a crashed run (pid %s)", pid)
                    self.out.remove(LOCK)
                    continue
                raise OutputError(
                    f"{self.out} is being written by another annotate run "
                    f"(pid {pid or '?'} on {host or '?'}); wait for it or stop it"
                ) from None
            return self
        raise OutputError(f"cannot take the lock {self.out.uri(LOCK)}")

    def _create(self, holder: str) -> None:
        if self.out.local:
            fd = os.open(self.out.local / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(holder)
        elif self.out.exists(LOCK):
            raise FileExistsError(LOCK)
        else:
            self.out.write_bytes(LOCK, holder.encode())

    def __exit__(self, *exc) -> None:
        self.out.remove(LOCK)


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


# --- preparing an output -------------------------------------------------------------------------


def run_settings(config: AnnotateConfig, variant: str, max_length: int, stride: int) -> dict:
    """What an output is bound to: resuming it with other settings would mix two kinds of rows."""
    return {
        "variant": variant,
        "max_length": max_length,
        "stride": stride,
        "segment": config.segment,
        "read": asdict(config.read),
    }


def input_files(config: AnnotateConfig, out: OutputDir) -> tuple[list[InputFile], list[str]]:
    """The input files in stream order (and the paths skipped), never the output itself."""
    files, skipped = expand_inputs(config.inputs)
    # An output inside an input directory must not become an input of its own next run.
    files = [f for f in files if not _is_within(f.path, out)]
    if not files:
        raise InputError("no input files")
    return files, skipped


def _is_within(path: str, out: OutputDir) -> bool:
    if out.local is None:
        return path == out.location or path.startswith(out.location + "/")
    return Path(os.path.realpath(local_path(path))).is_relative_to(os.path.realpath(out.local))


def make_output_dir(out: OutputDir) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another output")
    out.mkdir()


def _inputs_record(files: list[InputFile]) -> list[dict]:
    return [{"path": f.path, "size": f.size, "mtime": f.mtime} for f in files]


def _clear_output(out: OutputDir) -> None:
    """--overwrite: only our own files (parts, _manifest, _rejects, their temporaries), so that
    --overwrite on a wrong directory deletes nothing else. The manifest is not read: it may be
    the corrupt one that --overwrite is meant to get rid of."""
    for name in out.names():
        if name.startswith(("part-", "_", ".part-", "._")) and name != LOCK:
            out.remove(name)


def _check_same_run(out: OutputDir, manifest: dict, inputs: list[dict], bundle_id: str, settings):
    """Refuse to continue an output that another bundle, other settings or other inputs wrote."""
    if manifest.get("bundle_id") != bundle_id:
        raise OutputError(
            f"{out} was written with bundle {manifest.get('bundle_id')!r}, not {bundle_id!r}; "
            "pass --overwrite to start over"
        )
    # Resuming with another variant, window or reader would mix two kinds of rows in one
    # output (and other reader options change which document the resume position points at).
    old_settings = manifest.get("settings", settings)
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
    config: AnnotateConfig, bundle_id: str, settings: dict, inputs: list[dict], skipped: list[str]
) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "bundle_id": bundle_id,
        "bundle": str(config.model),
        "variant": settings["variant"],
        "device": config.device,
        "settings": settings,
        "inputs": inputs,
        "skipped_files": skipped,
        "options": {
            k: v for k, v in asdict(config).items() if k not in ("inputs", "output", "overwrite")
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
) -> dict | None:
    """Under the output's lock: the manifest this run continues (the output's, or a new one),
    or None when the output is already complete and there is nothing to do."""
    inputs = _inputs_record(files)
    manifest = None
    if config.overwrite:
        _clear_output(out)
    else:
        manifest = read_manifest(out)
        if manifest is None and any(name != LOCK for name in out.names()):
            raise OutputError(
                f"{out} exists, is not empty and is not an annotate output; choose another "
                "output or pass --overwrite"
            )
        if manifest is not None:
            _check_same_run(out, manifest, inputs, bundle_id, settings)
    if manifest and manifest.get("complete") and out.exists(SUCCESS):
        log.info("output is already complete: nothing to do", extra={"event": "noop"})
        return None
    if manifest is None:
        manifest = _new_manifest(config, bundle_id, settings, inputs, skipped)
    manifest["runs"] += 1
    out.remove(SUCCESS)
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
    config: AnnotateConfig, bundle_id: str, settings: dict
) -> Iterator[tuple[OutputDir, list[InputFile], dict | None]]:
    """The output, its input files and, under its lock, the manifest to continue (None when
    the output is already complete): what both engines do before any document is read."""
    out = OutputDir(config.output)
    files, skipped = input_files(config, out)
    make_output_dir(out)
    with RunLock(out):
        yield out, files, prepare_run(out, config, bundle_id, settings, files, skipped)


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
    def room(self) -> int:
        """Documents the open part takes before it is full."""
        return self.part_docs - self.documents_in_part

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
