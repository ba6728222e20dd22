"""OpenVINO as a second runtime for bundles: a compiled model behind the Tagger's LogitsFn.

Optional (`pip install "nerbatch[openvino]"`): nothing here is imported unless a run asks for
OpenVINO or `--runtime auto` finds it installed. It runs the bundle's `openvino` variant (an int8
IR quantized by NNCF at export) or the fp32 ONNX graph, which OpenVINO reads directly, in f32 or
bf16.

What measuring taught (docs/openvino.md):
- the inference precision is always set: a plain compile of an fp32 model runs in bf16 on CPUs
  that have it, silently;
- OpenVINO compiles and caches kernels for each new input shape, which costs memory per
  distinct shape: batches are padded to a multiple of 4 sub-tokens (SEQUENCE_STEP) and their
  rows to a power of two;
- every thread that runs batches gets its own infer request (requests are not thread-safe; the
  compiled model is), so the Tagger's `streams` run concurrently.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from pathlib import Path

import numpy as np

from .errors import BundleError

log = logging.getLogger(__name__)

PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # our name -> INFERENCE_PRECISION_HINT


def missing(quantizer: bool = False) -> str | None:
    """Why OpenVINO (and with `quantizer`, NNCF) cannot be used here; None when it can."""
    for module in ("openvino", "nncf") if quantizer else ("openvino",):
        try:
            __import__(module)
        except ImportError as e:
            return f'{module} is not installed ({e}); pip install "nerbatch[openvino]"'
    return None


def compile_model(
    file: Path,
    precision: str = "f32",
    threads: int = 0,
    streams: int = 1,
    cache: Path | None = None,
):
    """A CPU CompiledModel of an IR (.xml) or ONNX file; `threads` 0 is every core. `streams`
    1: one request on every core (LATENCY); 0: OpenVINO's THROUGHPUT streams (measured the
    best: docs/openvino.md), N: that many streams. `cache`: OpenVINO's CACHE_DIR, where it
    keeps the compiled model (a blob per file and settings) and loads it from the next time:
    about 0.2 s instead of 0.6-0.9 s for MiniLM int8. A cache directory that cannot be made or
    used only costs the compile."""
    import openvino as ov
    import openvino.properties.hint as hints

    if precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; expected {list(PRECISIONS)}")
    config = {
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
        # One stream per concurrent batch: LATENCY gives one request every core.
        hints.performance_mode: (
            hints.PerformanceMode.LATENCY if streams == 1 else hints.PerformanceMode.THROUGHPUT
        ),
    }
    if streams > 1:
        config["NUM_STREAMS"] = str(streams)
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    started = time.perf_counter()
    core = ov.Core()
    compiled = _compile_cached(core, file, config, cache) if cache is not None else None
    if compiled is None:
        try:
            compiled = core.compile_model(core.read_model(str(file)), "CPU", config)
        except Exception as e:  # broad: OpenVINO raises RuntimeError/its own types for bad models
            text = " ".join(str(e).split())[:300]
            raise BundleError(f"OpenVINO cannot load {file}: {text}") from e
    log.debug(
        "OpenVINO compiled %s in %.2f s%s",
        file.name,
        time.perf_counter() - started,
        " (loaded from its cache)" if _from_cache(compiled) else "",
        extra={"event": "openvino_compile"},
    )
    return compiled


def _compile_cached(core, file: Path, config: dict, cache: Path):
    """The model compiled with CACHE_DIR `cache` (from the path, so that a cached blob is
    loaded without reading the model first), or None when the cache cannot be used."""
    try:
        cache.mkdir(parents=True, exist_ok=True)  # OpenVINO raises on a directory it cannot make
    except OSError as e:
        log.info("OpenVINO's compile cache %s cannot be made (%s): not caching", cache, e)
        return None
    try:
        return core.compile_model(str(file), "CPU", {**config, "CACHE_DIR": str(cache)})
    except Exception as e:  # broad: its own types; a bad model fails again without the cache
        log.info(
            "OpenVINO could not compile %s with its cache %s (%s): compiling without it",
            file,
            cache,
            " ".join(str(e).split())[:300],
        )
        return None


def _from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # broad: a version without the property raises its own type
        return False


def optimal_requests(compiled) -> int:
    """How many requests keep the compiled model's streams busy."""
    return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))


def input_names(compiled) -> list[str]:
    return [port.get_any_name() for port in compiled.inputs]


# Batches are padded to a multiple of this many sub-tokens, and their rows to a power of two:
# OpenVINO caches compiled kernels and oneDNN primitives per input shape, so every distinct
# shape costs memory. Measured (docs/openvino.md): unpadded, peak RSS grew from 1,021 MB on a
# 5 MB corpus to 1,347 MB on 50 MB at about 21,800 tokens/s; padded so, 749 MB on 5 MB and 808
# MB on 20 MB at about 20,500 tokens/s; padding to 8 or 16 cost 14-23% of the speed.
SEQUENCE_STEP = 4


def logits_fn(compiled, pad_id: int, max_length: int | None, feed):
    """The Tagger's LogitsFn over a CompiledModel, thread-safe: each thread that runs batches
    has its own infer request. The sequence is padded (`pad_id`, masked) to a multiple of
    SEQUENCE_STEP, never beyond `max_length`, and the rows (masked rows of padding) to a power
    of two: at most 32 x 6 shapes in a default run. The logits are cut back. `feed`: (input
    names, ids, mask, types) -> the inputs (backends.feed)."""
    names = set(input_names(compiled))
    local = threading.local()

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        rows, seq = ids.shape
        width = -(-seq // SEQUENCE_STEP) * SEQUENCE_STEP
        width = max(seq, width if max_length is None else min(width, max_length))
        height = 1 << (rows - 1).bit_length()
        if (height, width) != (rows, seq):
            ids, mask, types = (
                _padded(array, (height, width), fill)
                for array, fill in ((ids, pad_id), (mask, 0), (types, 0))
            )

        def infer() -> np.ndarray:
            request.infer(feed(names, ids, mask, types))
            # A copy (the request reuses its output buffer), without the padding.
            return np.array(request.get_output_tensor(0).data[:rows, :seq], dtype=np.float32)

        if _FIRST_DONE.is_set():
            return infer()
        with _FIRST_LOCK:  # see _FIRST_LOCK
            result = infer()
            _FIRST_DONE.set()
        return result

    return logits


# The first inference of a process runs alone. OpenVINO's Python binding initialises a
# function-local static the first time a tensor's `.data` is read, holding the GIL; two threads
# doing that at once can deadlock (seen: the first batches of two streams, each in its own
# thread, hung a process forever at 0% CPU).
_FIRST_LOCK = threading.Lock()
_FIRST_DONE = threading.Event()


def _padded(array: np.ndarray, shape: tuple[int, int], fill: int) -> np.ndarray:
    padded = np.full(shape, fill, dtype=np.int64)
    padded[: array.shape[0], : array.shape[1]] = array
    return padded


def quantize(
    source: Path,
    target: Path,
    calibration: list[dict[str, np.ndarray]],
    keep_fp32: list[str] | None = None,
) -> dict:
    """NNCF post-training int8 quantization of an ONNX graph into an OpenVINO IR (`target`
    .xml beside its .bin), calibrated on `calibration` (model input feeds), f32 elsewhere
    (weights are not compressed to fp16). `keep_fp32`: regular expressions of node names left
    unquantized. Returns what was done, for bundle.json."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(source))
    scope = nncf.IgnoredScope(patterns=keep_fp32 or [], validate=False)
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars: not for cron logs
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=scope,
        )
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return {
        "quantization": "NNCF post-training int8 (ModelType.TRANSFORMER), f32 elsewhere",
        "calibration_batches": len(calibration),
        "kept_fp32": keep_fp32 or [],
        "openvino": ov.__version__,
        "nncf": nncf.__version__,
    }


def load(
    file: Path, precision: str, threads: int, streams: int, padding, feed, cache: Path | None = None
):
    """What backends.load needs of `file` on OpenVINO: (input name -> element type, the output's
    shape, the streams it runs, its LogitsFn), the batches padded (`padding`: pad id and window,
    or None) to a few shapes; compiled through the CACHE_DIR `cache` when given."""
    compiled = compile_model(file, precision, threads, streams, cache)
    pad_id, max_length = padding or (0, None)
    inputs = {port.get_any_name(): _element_type(port) for port in compiled.inputs}
    shape = _shape(compiled.outputs[0]) if compiled.outputs else []
    streams = streams or optimal_requests(compiled)
    return inputs, shape, streams, logits_fn(compiled, pad_id, max_length, feed)


def _element_type(port) -> str:
    kind = port.get_element_type().get_type_name()  # 'i64', 'f32', ...
    return f"tensor({_ONNX_TYPES.get(kind, kind)})"  # as ONNX Runtime names it


def _shape(port) -> list[int | str]:
    return [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]


_ONNX_TYPES = {"i64": "int64", "i32": "int32", "f32": "float", "f16": "float16", "bf16": "bfloat16"}
