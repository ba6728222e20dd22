"""`nerbatch annotate`: stream documents through an ONNX bundle into a Parquet span dataset.

The local engine: a bounded reader -> chunks of documents -> tokenise -> windows batched by length
-> ONNX Runtime -> spans -> part files. Memory is bounded by one chunk (and one document), whatever
the corpus size. Progress is committed part by part (see `output.py`), so a killed run resumes where
the last committed part ended: the document stream is deterministic, and the manifest records how
many documents of it are done. Every document is either annotated (zero or more spans) or rejected.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .bundle import load_bundle
from .errors import InputError, NerbatchError, OutputError
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
from .readers import Document, InputFile, ReadOptions, Reject, expand_inputs, read_file
from .storage import local_path

log = logging.getLogger(__name__)

LOCK = "_lock"
ENGINES = ("local", "ray")


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
    batch_size: int = 32  # measured: 32 beats 8 and 128 for int8 MiniLM on 2 cores
    max_batch_tokens: int = 4096
    segment: str = "lines"  # context boundaries: "lines", "paragraphs" or "none" (see tagger)
    max_length: int | None = None  # default: the bundle's
    stride: int | None = None
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    streams: int = 1  # batches run at once, each on threads / streams cores
    read: ReadOptions = field(default_factory=ReadOptions)
    chunk_docs: int = 2048  # documents tokenised and tagged together (sorted by length)
    # ... or fewer, when they are long: 0.5 MB of text (about 115k sub-tokens) is plenty to sort
    # into full batches; 2 MB peaked 43% higher (tiny model, 5 MB corpus: 524 vs 366 MB).
    chunk_chars: int = 500_000
    part_docs: int = 20_000  # documents per committed part (the most work a crash redoes)
    overwrite: bool = False
    engine: str = "local"  # "local" (this module) or "ray" (ray_engine.py)
    ray: RayOptions = field(default_factory=RayOptions)


class Interrupted(NerbatchError):
    """Stopped by SIGTERM / SIGINT after committing the current part; run again to resume."""


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
    """SIGTERM / SIGINT set a flag that the loop checks between chunks (main thread only)."""

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


def _inputs_record(files: list[InputFile]) -> list[dict]:
    return [{"path": f.path, "size": f.size, "mtime": f.mtime} for f in files]


def _prepare_output(
    out: OutputDir, config: AnnotateConfig, inputs: list[dict], bundle_id: str, settings: dict
):
    """The manifest to continue from, or None to start fresh. Refuses a mismatched output."""
    if config.overwrite:
        # Only our own files (parts, _manifest, _rejects, their temporaries): --overwrite on a
        # wrong directory must not delete anything else. The manifest is not read: it may be
        # the corrupt one that --overwrite is meant to get rid of.
        for name in out.names():
            if name.startswith(("part-", "_", ".part-", "._")) and name != LOCK:
                out.remove(name)
        return None
    manifest = read_manifest(out)
    if manifest is None:
        if any(name != LOCK for name in out.names()):
            raise OutputError(
                f"{out} exists, is not empty and is not an annotate output; choose another "
                "output or pass --overwrite"
            )
        return None
    if manifest.get("bundle_id") != bundle_id:
        raise OutputError(
            f"{out} was written with bundle {manifest.get('bundle_id')!r}, not {bundle_id!r}; "
            "pass --overwrite to start over"
        )
    # Resuming with another variant, window or reader would mix two kinds of rows in one
    # output (and other reader options change which document the resume count points at).
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
        changed = sorted(set(old) ^ set(new)) + sorted(
            p for p in set(old) & set(new) if old[p] != new[p]
        )
        raise OutputError(
            f"{out}: the inputs changed since the run that wrote it (e.g. {changed[0]}: added, "
            "removed, or a different size or mtime); pass --overwrite to start over"
        )
    return manifest


def documents(files: list[InputFile], read: ReadOptions) -> Iterator[Document | Reject]:
    for file in files:
        yield from read_file(file, read)


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


def make_output_dir(out: OutputDir) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another output")
    out.mkdir()


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
    manifest = _prepare_output(out, config, inputs, bundle_id, settings)
    if manifest and manifest.get("complete") and out.exists(SUCCESS):
        log.info("output is already complete: nothing to do", extra={"event": "noop"})
        return None
    if manifest is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "bundle_id": bundle_id,
            "bundle": str(config.model),
            "variant": settings["variant"],
            "device": config.device,
            "settings": settings,
            "inputs": inputs,
            "skipped_files": skipped,
            "options": {
                k: v
                for k, v in asdict(config).items()
                if k not in ("inputs", "output", "overwrite")
            },
            "parts": [],
            "documents_done": 0,
            "counts": {"documents": 0, "annotated": 0, "rejected": 0, "spans": 0, "tokens": 0},
            "complete": False,
            "versions": {"nerbatch": __version__},
            "started": _now(),
            "runs": 0,
        }
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


def complete_summary(out: OutputDir) -> dict:
    """The summary of an output that was already complete."""
    return dict(read_manifest(out)["summary"], already_complete=True)


def annotate(config: AnnotateConfig, silent: bool = True) -> dict:
    """Annotate the inputs into `config.output`; returns the run summary."""
    if config.engine == "ray":
        from .ray_engine import annotate_ray  # ray is an optional extra: imported only here

        return annotate_ray(config, silent)
    if config.engine != "local":
        raise NerbatchError(f"unknown engine {config.engine!r}; expected one of {list(ENGINES)}")
    started = time.monotonic()
    bundle = load_bundle(config.model)
    tagger = bundle.tagger(
        config.variant,
        config.device,
        config.batch_size,
        config.max_length,
        config.stride,
        config.threads,
        config.max_batch_tokens,
        config.segment,
        config.streams,
    )
    variant = bundle.resolve_variant(config.variant, config.device)
    max_length = tagger.window + tagger.encoder.n_special
    settings = run_settings(config, variant, max_length, tagger.stride)
    out = OutputDir(config.output)
    files, skipped = input_files(config, out)
    make_output_dir(out)
    with RunLock(out), StopFlag() as stop:
        manifest = prepare_run(out, config, bundle.bundle_id, settings, files, skipped)
        if manifest is None:
            return complete_summary(out)
        run = _Run(out, manifest, tagger, bundle.bundle_id, config, silent)
        run.process(documents(files, config.read), manifest["documents_done"], stop)
        run.finish()
    summary = dict(manifest["summary"])
    summary["seconds_this_run"] = round(time.monotonic() - started, 2)
    return summary


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim), once per chunk.

    Tokenizer and inference threads allocate in their own malloc arenas, which fragment: without
    this, peak RSS crept up with corpus size (tiny model, 2 MB chunks: 527 MB on 5 MB, 581 MB on
    20 MB; with it 524 and 536). A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _is_within(path: str, out: OutputDir) -> bool:
    if out.local is None:
        return path == out.location or path.startswith(out.location + "/")
    return Path(os.path.realpath(local_path(path))).is_relative_to(os.path.realpath(out.local))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Run:
    """The state of one annotate run: the open part, its rejects, counts, the manifest."""

    def __init__(
        self,
        out: OutputDir,
        manifest: dict,
        tagger,
        model_id: str,
        config: AnnotateConfig,
        silent: bool,
    ):
        self.out = out
        self.manifest = manifest
        self.tagger = tagger
        self.model_id = model_id
        self.config = config
        self.silent = silent
        self.part: PartWriter | None = None
        self.part_docs = 0
        self.part_counts = {"annotated": 0, "rejected": 0, "spans": 0, "tokens": 0}
        self.rejects: list[Reject] = []
        self.started = time.monotonic()
        self.run_tokens = 0
        self.run_docs = 0
        self.pending = None  # (chunk, future of its inference) while it is in flight

    def process(self, stream: Iterator[Document | Reject], skip: int, stop: StopFlag) -> None:
        """Read, tag and write the stream from document `skip` on, committing part by part.

        One chunk is inferred (tokenise + ONNX Runtime, both release the GIL) in a worker
        thread while the main thread decodes and writes the previous chunk and reads the next.
        """
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        self.progress = tqdm(
            unit="doc", disable=True if self.silent else None, desc="annotate", dynamic_ncols=True
        )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nerbatch-infer")
        chunk: list[Document] = []
        chunk_chars = 0
        try:
            for ordinal, item in enumerate(stream):
                if ordinal < skip:
                    continue
                self._ensure_part()
                self.part_docs += 1
                self.run_docs += 1  # annotated or rejected, like "documents"
                if isinstance(item, Reject):
                    self.rejects.append(item)
                    self.part_counts["rejected"] += 1
                else:
                    chunk.append(item)
                    chunk_chars += len(item.text)
                part_full = self.part_docs >= self.config.part_docs
                if chunk and (
                    part_full
                    or len(chunk) >= self.config.chunk_docs
                    or chunk_chars >= self.config.chunk_chars
                    or stop.signal is not None  # stop soon: tag what we have, commit, exit
                ):
                    self._submit(executor, chunk)
                    chunk, chunk_chars = [], 0
                if part_full or (stop.signal is not None and not chunk):
                    self._drain()
                    self._commit()
                    if stop.signal is not None:
                        raise Interrupted(self._interrupted_message(stop.signal))
            if chunk:
                self._submit(executor, chunk)
            self._drain()
            if self.part is not None or not self.manifest["parts"]:
                self._ensure_part()
                self._commit()
        except OSError as e:
            # Readers turn their own I/O errors into rejects: this is a write (disk full, a
            # vanished mount, a read-only directory).
            self._abort_part()
            raise OutputError(
                f"cannot write to {self.out}: {e.strerror or e}; the output stays resumable from "
                "the last committed part once the problem is fixed"
            ) from e
        except BaseException:
            self._abort_part()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self.progress.close()

    def _submit(self, executor, chunk: list[Document]) -> None:
        """Start inferring `chunk`; meanwhile write the chunk before it."""
        future = executor.submit(self._infer, chunk)
        self._drain()
        self.pending = (chunk, future)

    def _drain(self) -> None:
        """Write the chunk in flight, if any (waits for its inference)."""
        if self.pending is not None:
            chunk, future = self.pending
            self.pending = None
            self._write(chunk, *future.result())
            self.progress.update(len(chunk))
            _trim_heap()

    def _abort_part(self) -> None:
        if self.part is not None:
            with contextlib.suppress(OSError):  # the disk may still be full
                self.part.abort()
            self.part = None

    def _interrupted_message(self, signum: int) -> str:
        return (
            f"stopped by {signal.Signals(signum).name} after "
            f"{self.manifest['documents_done']} documents; run the same command again to resume"
        )

    def _ensure_part(self) -> None:
        if self.part is None:
            name = f"part-{len(self.manifest['parts']):05d}.parquet"
            self.part = PartWriter(self.out, name)

    def _infer(self, chunk: list[Document]):
        encoded = self.tagger.encoder.encode_batch([d.text for d in chunk])
        return encoded, self.tagger.predict(encoded)

    def _write(self, chunk: list[Document], encoded, predictions) -> None:
        for document, enc, prediction in zip(chunk, encoded, predictions, strict=True):
            spans = self.tagger.spans(document.text, prediction)
            self.part.add(document.doc_id, document.source, document.text, spans, self.model_id)
            self.part_counts["spans"] += len(spans)
            self.part_counts["tokens"] += len(enc)
        self.part_counts["annotated"] += len(chunk)

    def _commit(self) -> None:
        """Commit the open part: rows, then its rejects, then the manifest that names both."""
        try:
            rows = self.part.commit()
            reject_file = None
            if self.rejects:
                self.out.mkdir(REJECTS)
                reject_file = f"{REJECTS}/{self.part.name}"
                write_rejects(self.out, reject_file, self.rejects)
        except OSError as e:
            raise OutputError(
                f"cannot write {self.out.uri(self.part.name)}: {e.strerror or e}; the output "
                "stays resumable "
                "from the last committed part once the problem is fixed"
            ) from e
        m = self.manifest
        m["parts"].append(
            {
                "file": self.part.name,
                "rejects_file": reject_file,
                "rows": rows,
                "documents": self.part_docs,
                **self.part_counts,
            }
        )
        m["documents_done"] += self.part_docs
        counts = m["counts"]
        counts["documents"] += self.part_docs
        for key, value in self.part_counts.items():
            counts[key] += value
        self.run_tokens += self.part_counts["tokens"]
        m["updated"] = _now()
        write_manifest(self.out, m)
        log.info(
            "committed %s: %d documents, %d spans",
            self.part.name,
            self.part_docs,
            rows,
            extra={
                "event": "part",
                "part": self.part.name,
                "documents": counts["documents"],
                "rejected": counts["rejected"],
                "spans": counts["spans"],
            },
        )
        self.part = None
        self.part_docs = 0
        self.part_counts = {"annotated": 0, "rejected": 0, "spans": 0, "tokens": 0}
        self.rejects = []

    def finish(self) -> None:
        """Mark the manifest complete with the run summary, then write _SUCCESS."""
        m = self.manifest
        has_rejects = any(p.get("rejects_file") for p in m["parts"])
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
        m["rejects"] = REJECTS if has_rejects else None
        write_manifest(self.out, m)
        self.out.write_bytes(SUCCESS, b"")
        log.info("done", extra={"event": "done", **m["summary"]})
