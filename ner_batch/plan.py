"""The run plan: everything an annotate engine needs before the first document, decided once.

`open_plan(config, engine)` loads the bundle, resolves the variant, the runtime (runtimes.py;
a resumed `auto` run keeps the recorded one) and the window, lists the inputs, takes the output's
lock, and reads or starts its manifest: a `RunPlan` with the settings the output is bound to and
the resume point. Engines (annotate.py's local engine, ray_engine.py) only turn the documents
after that point into committed parts through the Committer (committer.py).

Deliberately not here: choosing among runtimes (runtimes.py), the lock (lock.py), storage and
the output's file names (output.py), the manifest's format (manifest.py), reading (readers.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, runtimes
from . import manifest as manifest_file  # its write_manifest, looked up at each write
from .bundle import Bundle, load_bundle
from .errors import InputError, OptionError, OutputError
from .lock import RunLock
from .manifest import Manifest, read_manifest
from .output import (
    LOCK,
    SUCCESS,
    OutputDir,
    is_temporary,
    make_output_dir,
    refuse_foreign_files,
    remove_unrecorded,
)
from .readers import FORMATS, InputFile, expand_inputs, printable
from .run import AnnotateConfig
from .storage import local_path
from .tagger import Tagger, TaggerOptions

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What a run does, decided before its first document.

    `manifest` is None when the output is already complete (nothing to do). `tagger` is the
    tagger of this process for engines that tag here (local); engines whose workers tag open
    their own from `bundle`, `variant`, `runtime` and `window` (runtimes.open_tagger)."""

    config: AnnotateConfig
    bundle: Bundle
    variant: str  # the precision: fp32, int8, fp16, bf16
    runtime: dict  # {"runtime": name or "auto" (workers choose), "reason": ..., probe results}
    window: tuple[int, int]  # (max_length, stride)
    settings: dict  # what the output is bound to (run_settings)
    out: OutputDir
    files: list[InputFile]
    manifest: Manifest | None
    tagger: Tagger | None = None

    @property
    def resume(self) -> tuple[int, int, int]:
        """Where the remaining work starts: see `resume_point`."""
        return resume_point(self.manifest)


@contextlib.contextmanager
def open_plan(config: AnnotateConfig, tags_here: bool = True) -> Iterator[RunPlan]:
    """The plan of `config`'s run, with the output's lock held while it is used. `tags_here`:
    the engine tags in this process (the tagger is opened and a runtime chosen here)."""
    bundle = load_bundle(config.model)
    previous = resumed_manifest(config)
    if config.decode is None:  # the output's own decoding when resumed, else the default's
        decode = previous.settings["decode"] if previous is not None else TaggerOptions.decode
        config = dataclasses.replace(config, decode=decode)
    # A resumed `--runtime auto` run keeps the recorded runtime: its rows stay one runtime's.
    recorded = previous.runtime if previous is not None and config.runtime == "auto" else None
    runtime = runtimes.run_runtime(config.runtime, recorded)
    variant = bundle.resolve_variant(config.variant, config.device)
    tagger = None
    try:
        if tags_here:
            tagger = runtimes.open_tagger(
                bundle,
                config.variant,
                config.device,
                runtime=runtime,
                max_length=config.max_length,
                stride=config.stride,
                threads=config.threads,
                options=config.tagger_options(),
            )
            choice = tagger.runtime
            window = (tagger.window + tagger.encoder.n_special, tagger.stride)
        else:
            choice, window = runtimes.for_workers(
                bundle, variant, config.device, runtime, config.max_length, config.stride
            )
    except OptionError as e:
        if not recorded:
            raise
        raise OptionError(
            f"{config.output} was begun with runtime {recorded}, which a resumed run keeps, "
            f"but here {e}; resume it where {recorded} runs, or pass --overwrite"
        ) from e
    if recorded:
        choice = {"runtime": recorded, "reason": runtimes.RECORDED}
    settings = run_settings(config, variant, window, choice["runtime"])
    encoder = tagger.encoder if tagger is not None else bundle.encoder()
    if encoder.whole_words:
        # Recorded only where the grouping changed in 0.5: an output that an older version
        # began with such a bundle cut words differently and is not resumed.
        settings["words"] = "whitespace"
    with prepared_output(config, bundle.bundle_id, settings, choice) as (out, files, manifest):
        yield RunPlan(
            config, bundle, variant, choice, window, settings, out, files, manifest, tagger
        )


def run_settings(config: AnnotateConfig, variant: str, window: tuple[int, int], runtime: str):
    """What an output is bound to: resuming it with other settings would mix two kinds of rows.

    The batching settings are among them: dynamic int8 quantisation scales each batch tensor as
    a whole, so a span's score (and, rarely, its label) depends on which windows share its
    batch. Batches are formed inside chunks whose bounds follow from these settings and the
    input alone, and runs commit only at chunk bounds, so a resumed run forms the batches of an
    uninterrupted one, as long as these do not change. The runtime is one of them: OpenVINO's
    and ONNX Runtime's logits differ (a resumed `--runtime auto` run takes the recorded one)."""
    max_length, stride = window
    return {
        "variant": variant,
        "runtime": runtime,
        "max_length": max_length,
        "stride": stride,
        "segment": config.segment,
        "decode": config.decode,
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


def resumed_manifest(config: AnnotateConfig) -> Manifest | None:
    """The manifest of the output this run resumes (its `settings.decode` is argmax for outputs
    of nerbatch < 0.5, see manifest.py); None for a new output or --overwrite. Read once, before
    the plan takes the lock, for what a resumed run keeps: its runtime and its decoding."""
    return None if config.overwrite else read_manifest(OutputDir(config.output))


def resume_point(manifest: Manifest) -> tuple[int, int, int]:
    """Where the remaining work starts: (input index, documents of that input to skip while
    reading it, documents of the stream read from there to drop after that).

    A commit records its position; when a manifest has none, or an older one (written by a
    version that did not record it), the difference is dropped from the stream instead."""
    done = manifest.documents_done
    position = manifest.position
    if position and position.documents_done <= done:
        return position.input, position.items, done - position.documents_done
    return 0, 0, done


def complete_summary(out: OutputDir) -> dict:
    """The summary of an output that was already complete."""
    return dict(read_manifest(out).summary, already_complete=True)


def log_runtime(choice: dict) -> None:
    log.info(
        "runtime %s: %s",
        choice["runtime"],
        choice["reason"],
        extra={"event": "runtime", **{k: v for k, v in choice.items() if k != "reason"}},
    )


# --- preparing the output ----------------------------------------------------------------------


@contextlib.contextmanager
def prepared_output(
    config: AnnotateConfig, bundle_id: str, settings: dict, runtime_choice: dict | None = None
) -> Iterator[tuple[OutputDir, list[InputFile], Manifest | None]]:
    """The output, its input files and, under its lock, the manifest to continue (None when
    the output is already complete)."""
    out = OutputDir(config.output)
    files, skipped = input_files(config, out)
    make_output_dir(out)
    with RunLock(out):
        manifest, files = prepare_run(
            out, config, bundle_id, settings, files, skipped, runtime_choice
        )
        if manifest is not None:
            _log_skipped(skipped)
            if runtime_choice:
                log_runtime(runtime_choice)
        yield out, files, manifest


def input_files(config: AnnotateConfig, out: OutputDir) -> tuple[list[InputFile], list[str]]:
    """The input files in stream order (and the paths skipped), never the output itself."""
    files, skipped = expand_inputs(config.inputs)
    # An output inside an input directory must not become an input of its own next run.
    files = [f for f in files if not _is_within(f.path, out)]
    if not files:
        raise InputError("no input files")
    return files, skipped


def prepare_run(
    out: OutputDir,
    config: AnnotateConfig,
    bundle_id: str,
    settings: dict,
    files: list[InputFile],
    skipped: list[str],
    runtime_choice: dict | None = None,
) -> tuple[Manifest | None, list[InputFile]]:
    """Under the output's lock: the manifest this run continues (the output's, or a new one),
    or None when the output is already complete and there is nothing to do; and the input
    files in the order of that manifest."""
    manifest = None
    if config.overwrite:
        refuse_foreign_files(out)
    else:
        manifest = read_manifest(out)
        # Only our lock and temporaries: a run killed before it wrote its first manifest.
        leftovers = [n for n in out.names() if n != LOCK and not is_temporary(n)]
        if manifest is None and leftovers:
            raise OutputError(
                f"{out} exists, is not empty and is not an annotate output; choose another "
                "output or pass --overwrite"
            )
        if manifest is not None:
            files = _in_recorded_order(out, manifest, files)
            _match_recorded_inputs(manifest, files)
            _check_same_run(out, manifest, _inputs_record(files), bundle_id, settings)
            manifest.settings = settings  # the same, with what older versions left out
    if manifest and manifest.complete and out.exists(SUCCESS):
        log.info("output is already complete: nothing to do", extra={"event": "noop"})
        return None, files
    if manifest is None:
        manifest = _new_manifest(config, bundle_id, settings, files, skipped, runtime_choice)
    manifest.runs += 1
    try:
        out.remove(SUCCESS)
        # Written now, before any document is read: an output killed at any moment from here on
        # is one that the same command resumes (--overwrite: starts afresh, old parts unnamed).
        manifest_file.write_manifest(out, manifest)
        remove_unrecorded(out, {p.file for p in manifest.parts}, set(manifest.rejects_files()))
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from e
    if manifest.documents_done:
        log.info(
            "resuming after %d documents (%d parts)",
            manifest.documents_done,
            len(manifest.parts),
            extra={"event": "resume", "documents_done": manifest.documents_done},
        )
    return manifest, files


def _new_manifest(
    config: AnnotateConfig,
    bundle_id: str,
    settings: dict,
    files: list[InputFile],
    skipped: list[str],
    runtime_choice: dict | None,
) -> Manifest:
    return Manifest(
        bundle_id=bundle_id,
        bundle=str(config.model),
        variant=settings["variant"],
        device=config.device,
        settings=settings,
        inputs=_inputs_record(files),
        runtime_choice=runtime_choice,
        fingerprints={
            f.path: _fingerprint(f.path, f.size)
            for f in files
            if f.remote is None and not f.error and f.size >= 0
        },
        skipped_files=skipped,
        options={
            k: v for k, v in asdict(config).items() if k not in ("inputs", "output", "overwrite")
        },
        files={
            "read": sum(1 for f in files if not f.error),
            "rejected": sum(1 for f in files if f.error),
            "skipped": len(skipped),
        },
        versions={"nerbatch": __version__},
        started=now(),
    )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def _inputs_record(files: list[InputFile]) -> list[dict]:
    return [{"path": f.path, "size": f.size, "mtime": f.mtime} for f in files]


def _in_recorded_order(out: OutputDir, manifest: Manifest, files: list[InputFile]):
    """The same inputs given in another order (`b a` after `a b`) are read in the recorded
    order: the stream, and so the resume position and the rows, are those of the first run."""
    order = {record["path"]: n for n, record in enumerate(manifest.inputs)}
    paths = [f.path for f in files]
    if len(order) != len(manifest.inputs) or sorted(paths) != sorted(order):
        return files  # not the same inputs: _check_same_run says which differ
    if paths != list(order):
        log.info(
            "the inputs are given in another order than when %s was started: reading them in "
            "the recorded order",
            out,
            extra={"event": "input_order"},
        )
    return sorted(files, key=lambda f: order[f.path])


def _match_recorded_inputs(manifest: Manifest, files: list[InputFile]) -> None:
    """A local input that still holds the bytes it held when the output was started (its
    recorded fingerprint) is read as then, with its recorded size and mtime:
    - appended to since (larger, not older): read up to the recorded size, as the run that
      started it read it; what was appended is not annotated into this output (start another
      one for it). A resumed run reads the same bytes, a rerun of a complete output is a no-op;
    - only touched (same size, another mtime, as after a copy that does not keep times): a
      scheduled rerun of a finished job stays a no-op instead of "inputs changed".
    The fingerprint covers the first and last 64 KiB: a file rewritten in its middle only, to
    the same size, is not told from a touched one (documented in the README)."""
    recorded = {i["path"]: i for i in manifest.inputs}
    for file in files:
        before = recorded.get(file.path)
        if file.remote is not None or file.error or before is None or before["size"] < 0:
            continue
        if (file.size, file.mtime) == (before["size"], before["mtime"]):
            continue
        grown = file.size > before["size"] and file.mtime >= before["mtime"]
        touched = file.size == before["size"]
        expected = manifest.fingerprints.get(file.path)
        if not (grown or touched) or expected is None:
            continue
        if expected != _fingerprint(file.path, before["size"]):
            continue  # rewritten, not appended to or touched
        if grown:
            log.warning(
                "%s grew from %d to %d bytes since this output was started: reading its first "
                "%d bytes, as the run that started it did",
                file.display,
                before["size"],
                file.size,
                before["size"],
                extra={"event": "input_grew", "path": file.display},
            )
        else:
            log.info(
                "%s has a new modification time but the bytes it had when this output was "
                "started: the same input",
                file.display,
                extra={"event": "input_touched", "path": file.display},
            )
        file.size, file.mtime = before["size"], before["mtime"]


def _fingerprint(path: str, size: int) -> str | None:
    """sha256 of the first and the last 64 KiB of a local file's first `size` bytes: enough to
    tell an input that was appended to from one that was rewritten."""
    block = 1 << 16
    try:
        with open(path, "rb") as f:
            head = f.read(min(block, size))
            f.seek(max(0, size - block))
            tail = f.read(min(block, size))
    except OSError:
        return None
    return hashlib.sha256(head + b"|" + tail).hexdigest()


def _check_same_run(
    out: OutputDir, manifest: Manifest, inputs: list[dict], bundle_id: str, settings: dict
) -> None:
    """Refuse to continue an output that another bundle, other settings or other inputs wrote."""
    if manifest.bundle_id != bundle_id:
        raise OutputError(
            f"{out} was written with bundle {manifest.bundle_id!r}, not {bundle_id!r}; "
            "pass --overwrite to start over"
        )
    # Resuming with another variant, window or reader would mix two kinds of rows in one
    # output (and other reader options change which document the resume position points at).
    old_settings = manifest.recorded_settings(settings)
    if old_settings != settings:
        changed = [k for k in settings if old_settings.get(k) != settings[k]]
        raise OutputError(
            f"{out} was written with other settings ("
            + ", ".join(f"{k} {old_settings.get(k)!r}, now {settings[k]!r}" for k in changed)
            + "); run with the same options to resume it, or pass --overwrite to start over"
        )
    if manifest.inputs != inputs:
        old = {i["path"]: i for i in manifest.inputs}
        new = {i["path"]: i for i in inputs}
        changed_inputs = sorted(set(old) ^ set(new)) + sorted(
            p for p in set(old) & set(new) if old[p] != new[p]
        )
        example = changed_inputs[0] if changed_inputs else "the same inputs, some given twice"
        raise OutputError(
            f"{out}: the inputs changed since the run that wrote it (e.g. {example}: "
            "added, removed, or a different size or mtime); pass --overwrite to start over"
        )
