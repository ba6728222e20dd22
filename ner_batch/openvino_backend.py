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
from pathlib import Path

import numpy as np

from .errors import BundleError

PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # our name -> INFERENCE_PRECISION_HINT


def missing(quantizer: bool = False) -> str | None:
    """Why OpenVINO (and with `quantizer`, NNCF) cannot be used here; None when it can."""
    for module in ("openvino", "nncf") if quantizer else ("openvino",):
        try:
            __import__(module)
        except ImportError as e:
            return f'{module} is not installed ({e}); pip install "nerbatch[openvino]"'
    return None


def compile_model(file: Path, precision: str = "f32", threads: int = 0, streams: int = 1):
    """A CPU CompiledModel of an IR (.xml) or ONNX file; `threads` 0 is every core. `streams`
    1: one request on every core (LATENCY); 0: OpenVINO's THROUGHPUT streams (measured the
    best: docs/openvino.md), N: that many streams."""
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
    try:
        core = ov.Core()
        return core.compile_model(core.read_model(str(file)), "CPU", config)
    except Exception as e:  # broad: OpenVINO raises RuntimeError/its own types for bad models
        raise BundleError(f"OpenVINO cannot load {file}: {' '.join(str(e).split())[:300]}") from e


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


def logits_fn(compiled, pad_id: int, max_length: int):
    """The Tagger's LogitsFn over a CompiledModel, thread-safe: each thread that runs batches
    has its own infer request. The sequence is padded (`pad_id`, masked) to a multiple of
    SEQUENCE_STEP, never beyond `max_length`, and the rows (masked rows of padding) to a power
    of two: at most 32 x 6 shapes in a default run. The logits are cut back."""
    names = set(input_names(compiled))
    local = threading.local()

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        rows, seq = ids.shape
        width = max(seq, min(-(-seq // SEQUENCE_STEP) * SEQUENCE_STEP, max_length))
        height = 1 << (rows - 1).bit_length()
        feed = {}
        for name, array, fill in (
            ("input_ids", ids, pad_id),
            ("attention_mask", mask, 0),
            ("token_type_ids", types, 0),
        ):
            if name in names:
                if (height, width) != (rows, seq):
                    padded = np.full((height, width), fill, dtype=np.int64)
                    padded[:rows, :seq] = array
                    array = padded
                feed[name] = array
        request.infer(feed)
        # A copy (the request reuses its output buffer), without the padding.
        return np.array(request.get_output_tensor(0).data[:rows, :seq], dtype=np.float32)

    return logits


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


class SessionLike:
    """What the bundle checks use of an onnxruntime.InferenceSession, over a CompiledModel:
    `get_inputs()` / `get_outputs()` (name, type as 'tensor(int64)', shape) and `run`."""

    class _Port:
        def __init__(self, port) -> None:
            self.name = port.get_any_name()
            kind = port.get_element_type().get_type_name()  # 'i64', 'f32', ...
            self.type = f"tensor({_ONNX_TYPES.get(kind, kind)})"
            self.shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]

    def __init__(self, compiled) -> None:
        self.compiled = compiled

    def get_inputs(self) -> list:
        return [self._Port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list:
        return [self._Port(p) for p in self.compiled.outputs]

    def run(self, output_names, feed: dict, run_options=None) -> list[np.ndarray]:
        request = self.compiled.create_infer_request()
        request.infer(feed)
        return [
            np.array(request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))
        ]


_ONNX_TYPES = {"i64": "int64", "i32": "int32", "f32": "float", "f16": "float16", "bf16": "bfloat16"}
