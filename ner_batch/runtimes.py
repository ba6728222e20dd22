"""Where the runtime is chosen: which runtime runs a bundle's variant, for every engine and for
`ner_batch.load`, and the Tagger over it.

- `candidates`: the runtimes that can run a precision here (ONNX Runtime, OpenVINO: bundle
  variants, installed packages, the device) and, for `--runtime auto`, the ones to time;
- `open_tagger`: loads each candidate through backends.py, checks it (model_checks.py), times
  them when there are two (probe.py) and returns a Tagger on the chosen one, its `runtime`
  attribute saying which and why. A choice timed before for the same models, settings, CPU
  and runtime versions (`probe_identity`) is taken from probe.py's cache, and only the chosen
  runtime is loaded; OpenVINO keeps its compiled models in the same cache directory;
- `for_workers`: the same decision for engines whose workers open their own taggers (Ray);
- `run_runtime`: a resumed `auto` run keeps the runtime its output recorded;
- `export_variants`: which variants `nerbatch export` builds by default (openvino only where
  OpenVINO and NNCF are installed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from . import backends, model_checks, probe
from .bundle import BUNDLE_FILE, Bundle, cache_dir
from .choices import RUNS, RUNTIMES, check_choice
from .errors import BundleError, OptionError
from .tagger import Tagger, TaggerOptions, check_window

log = logging.getLogger(__name__)

RECORDED = "recorded by the run that began the output"


def usable(
    bundle: Bundle, precision: str, device: str = "cpu", among: tuple[str, ...] = backends.NAMES
) -> tuple[list[str], dict]:
    """The runtimes (`among`) that can run `precision` here, and why each other cannot."""
    runnable: list[str] = []
    why_not: dict[str, str] = {}
    for runtime in among:
        entry = RUNS.get((precision, runtime))
        if entry is None:
            why_not[runtime] = f"{runtime} does not run {precision} models"
        elif entry not in bundle.meta["variants"]:
            why_not[runtime] = (
                f"the bundle has no {entry} variant (export builds it when the [openvino] "
                "extra is installed)"
            )
        elif runtime == "openvino" and (missing := backends.missing(runtime, device)):
            why_not[runtime] = missing
        else:
            runnable.append(runtime)
    return runnable, why_not


def candidates(bundle: Bundle, precision: str, device: str, runtime: str) -> tuple[list[str], str]:
    """The runtimes to consider for `runtime` (one, or for `auto` the ones to time against
    each other) and why. `auto` times ONNX Runtime against OpenVINO only for int8, where the
    bundle has both variants; fp32 runs on ONNX Runtime and bf16 on OpenVINO."""
    try:
        check_choice("runtime", runtime, RUNTIMES)
    except ValueError as e:
        raise OptionError(str(e)) from e
    # A runtime given is the only one looked at: `--runtime onnxruntime` does not import
    # OpenVINO (0.1-0.2 s of start-up) to find out whether it could have run.
    among = backends.NAMES if runtime == "auto" else (runtime,)
    runnable, why_not = usable(bundle, precision, device, among)
    if runtime != "auto":
        if runtime not in runnable:
            raise OptionError(
                f"--runtime {runtime} cannot run --variant {precision}: {why_not[runtime]}"
            )
        return [runtime], f"--runtime {runtime}"
    if not runnable:
        raise OptionError(
            f"no runtime can run --variant {precision} here: {'; '.join(why_not.values())}"
        )
    if precision != "int8" or len(runnable) == 1:
        chosen = "onnxruntime" if "onnxruntime" in runnable else runnable[0]
        if precision != "int8":
            return [chosen], f"{precision} runs on {chosen} under --runtime auto"
        other = next(r for r in backends.NAMES if r != chosen)
        return [chosen], f"the only runtime for int8 here ({other}: {why_not[other]})"
    return runnable, "timed at start-up"


def run_runtime(requested: str, recorded: str | None) -> str:
    """The runtime a run asks for: a resumed `auto` run keeps the one its output recorded (its
    rows stay those of one runtime); else what was asked."""
    return recorded if requested == "auto" and recorded else requested


def for_workers(
    bundle: Bundle,
    precision: str,
    device: str,
    runtime: str,
    max_length: int | None = None,
    stride: int | None = None,
) -> tuple[dict, tuple[int, int]]:
    """The runtime choice and the window of an engine whose workers open their own taggers
    (`open_tagger` on each node), checked here before a cluster starts: the files of every
    candidate, and the window (`checked_window`). `auto` with two candidates stays `auto`
    (each worker times them on its own node)."""
    names, why = candidates(bundle, precision, device, runtime)
    for name in names:
        bundle.verify(RUNS[(precision, name)])
    window = checked_window(bundle, max_length, stride, bundle.encoder().n_special)
    if len(names) == 1:
        return {"runtime": names[0], "reason": why}, window
    return {"runtime": "auto", "reason": "each worker chooses on its node"}, window


def checked_window(
    bundle: Bundle, max_length: int | None, stride: int | None, n_special: int
) -> tuple[int, int]:
    """The window (max_length, stride): the given one or the bundle's, checked against the
    model's positions and the tokenizer's specials. An error blames whoever chose it: the user
    (OptionError) or bundle.json (BundleError)."""
    chosen = (max_length, stride) != (None, None)
    max_length, stride = bundle.window(max_length, stride)
    try:
        check_window(max_length, stride, n_special)
    except ValueError as e:
        if chosen:
            raise OptionError(str(e)) from e
        raise BundleError(
            f"bundle {bundle.path}: the window in {BUNDLE_FILE} does not fit its tokenizer: {e}"
        ) from e
    return max_length, stride


def open_tagger(
    bundle: Bundle,
    variant: str = "auto",
    device: str = "cpu",
    *,
    runtime: str = "auto",
    max_length: int | None = None,
    stride: int | None = None,
    threads: int = 0,
    options: TaggerOptions | None = None,
) -> Tagger:
    """A Tagger over the bundle's `variant` (a precision, or auto) on one runtime. `threads` is
    the total (0: every core); with `options.streams` > 1 each of the concurrent batches runs
    on threads / streams of them (0: the runtime's best, see TaggerOptions). `runtime`:
    onnxruntime, openvino, or auto (for int8 with both variants in the bundle: the faster
    one here, timed; see probe.py). The Tagger's `runtime` attribute says which runs and
    why."""
    options = options or TaggerOptions()
    precision = bundle.resolve_variant(variant, device)
    names, why = candidates(bundle, precision, device, runtime)
    given, length_chosen = (max_length, stride), max_length is not None
    max_length, stride = bundle.window(max_length, stride)  # before reading any file
    try:
        options.check()
    except ValueError as e:
        raise OptionError(str(e)) from e
    choice = key = None
    if len(names) > 1:
        identity = probe_identity(bundle, precision, names, max_length, threads, options.streams)
        key = probe.choice_key(identity)
        choice = probe.recall(key, names)
        if choice is not None:
            names = [choice["runtime"]]  # only the remembered runtime is verified and loaded
    for name in names:
        bundle.verify(RUNS[(precision, name)])  # the tokenizer's checksum too, before its use
    encoder = bundle.encoder()
    window = checked_window(bundle, *given, encoder.n_special)
    models = {}
    for name in names:
        entry = bundle.meta["variants"][RUNS[(precision, name)]]
        started = time.perf_counter()
        models[name] = backends.load(
            name,
            bundle.path / entry["file"],
            precision="bf16" if precision == "bf16" else "f32",
            device=device,
            threads=threads,
            streams=options.streams,
            padding=(encoder.pad_id, max_length),
            compile_cache=compile_cache(entry) if name == "openvino" else None,
        )
        model_checks.check_graph(bundle, models[name])
        model_checks.check_runs(bundle, models[name], encoder, max_length, length_chosen)
        log.debug(
            "loaded %s on %s and checked it in %.2f s",
            entry["file"],
            name,
            time.perf_counter() - started,
            extra={"event": "runtime_loaded", "runtime": name},
        )
    if choice is None and len(names) == 1:
        choice = {"runtime": names[0], "reason": why}
    elif choice is None:
        timed = {name: (model.logits, model.streams) for name, model in models.items()}
        choice = probe.choose(timed, encoder, max_length)
        about = {"bundle_id": bundle.bundle_id, "variant": precision, "threads": threads}
        probe.remember(key, choice, about)
    model = models[choice["runtime"]]
    options = dataclasses.replace(options, streams=model.streams)
    tagger = Tagger(
        encoder, bundle.labels, model.logits, *window, options, scheme=bundle.meta.get("scheme")
    )
    tagger.runtime = choice
    return tagger


def probe_identity(
    bundle: Bundle,
    precision: str,
    names: list[str],
    max_length: int,
    threads: int,
    streams: int,
) -> dict:
    """Everything that decides which of `names` the probe chooses for a run, the key its
    choice is remembered by: the candidates' model files (their checksums in bundle.json,
    checked before a model is loaded, so a copy of the bundle elsewhere shares the choice and
    a new export does not), the precision and window the probe times, the threads and streams
    asked for, the CPU (name, cores, the flags that decide int8 speed, a oneDNN ISA cap, the
    cores this process may use) and the runtimes' versions."""
    models = {}
    for name in names:
        entry = bundle.meta["variants"][RUNS[(precision, name)]]
        models[name] = _checksums(entry)
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "models": models,
        "precision": precision,
        "max_length": max_length,
        "threads": threads,
        "streams": streams,
        "cpu": {**probe.cpu_summary(), "usable_cores": usable_cores},
        "versions": {name: backends.version(name) for name in names},
    }


def compile_cache(entry: dict) -> Path:
    """Where OpenVINO keeps the compiled models of a bundle variant (`entry` of bundle.json),
    by content: a new export with other weights at the same path never meets the blobs of
    the old one (OpenVINO itself keys them by the file's path, size and time)."""
    return cache_dir() / "openvino" / _checksums(entry)[:16]


def _checksums(entry: dict) -> str:
    """The content identity of a variant's files: its sha256, with its weights' for an IR."""
    weights = entry.get("weights")
    if isinstance(weights, dict):
        return probe.choice_key({"file": entry["sha256"], "weights": weights["sha256"]})
    return entry["sha256"]


def export_variants() -> tuple[str, ...]:
    """The variants `nerbatch export` builds by default: fp32, int8, fp16, and openvino when
    OpenVINO and NNCF are installed."""
    from . import openvino_backend

    missing = openvino_backend.missing(quantizer=True)
    if missing:
        log.info("not building the openvino variant: %s", missing)
        return ("fp32", "int8", "fp16")
    return ("fp32", "int8", "fp16", "openvino")
