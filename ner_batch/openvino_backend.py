"""OpenVINO as a second runtime for bundles: a compiled model behind the Tagger's LogitsFn.

Optional (`pip install "nerbatch[openvino]"`): nothing here is imported unless a run asks for
OpenVINO or `--runtime auto` finds it installed. It runs the bundle's `openvino` variant (an int8
IR quantized by NNCF at export) or the fp32 ONNX graph, which OpenVINO reads directly, in f32 or
bf16.

What measuring taught (docs/openvino.md):
- the inference precision is always set: a plain compile of an fp32 model runs in bf16 on CPUs
  that have it, silently;
- OpenVINO compiles kernels for each new input shape; that first run of a shape cost less here
  than padding batches to a few shapes does (see `logits_fn`);
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

from .errors import BundleError, OptionError

PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # our name -> INFERENCE_PRECISION_HINT


def missing(quantizer: bool = False) -> str | None:
    """Why OpenVINO (and with `quantizer`, NNCF) cannot be used here; None when it can."""
    for module in ("openvino", "nncf") if quantizer else ("openvino",):
        try:
            __import__(module)
        except ImportError as e:
            return f'{module} is not installed ({e}); pip install "nerbatch[openvino]"'
    return None


def require() -> None:
    reason = missing()
    if reason is not None:
        raise OptionError(f"--runtime openvino needs OpenVINO: {reason}")


def cpu_description() -> str:
    """The CPU OpenVINO sees, and its int8/bf16 capabilities: e.g. 'AMD EPYC (INT8, BF16)'."""
    import openvino as ov

    core = ov.Core()
    name = core.get_property("CPU", "FULL_DEVICE_NAME")
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    shown = [c for c in capabilities if c in ("INT8", "BF16", "FP16")]
    return f"{name} ({', '.join(shown)})"


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


def logits_fn(compiled):
    """The Tagger's LogitsFn over a CompiledModel, thread-safe: each thread that runs batches
    has its own infer request.

    Batches run in their own shapes, unpadded. OpenVINO compiles kernels for each new shape and
    caches them (CPU_RUNTIME_CACHE_CAPACITY, 5,000 shapes by default, more than the 32 x 128 a
    default run can form); padding to buckets of 16 sub-tokens (and rows to powers of two)
    measured 18% slower on CoNLL sentences here than paying each shape's first run
    (docs/openvino.md)."""
    names = set(input_names(compiled))
    local = threading.local()

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        request.infer({name: array for name, array in feed.items() if name in names})
        # A copy: the request reuses its output buffer for the next batch.
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

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
