"""Runtimes behind one interface: a model file in, a `Model` (its logits function) out.

    model = backends.load("onnxruntime", "export/minilm/model.int8.onnx", threads=2)
    model.logits(ids, mask, types)  # (batch, seq) int64 each -> (batch, seq, labels) float32

Two implementations, ONNX Runtime (here) and OpenVINO (openvino_backend.py, optional: imported
only when a run asks for it). annotate, export's validation and the start-up probe all load
models through `load`, so sessions are made one way, "feed token types only if the graph takes
them" is written once (`feed`), and the graph checks (model_checks.py) see the same `Model`
whatever runs it.

Deliberately not here: which runtime a run uses (runtimes.py), bundle files and checksums
(bundle.py), batching and decoding (tagger.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .choices import DEVICES, RUNTIMES, check_choice
from .errors import BundleError
from .tagger import LogitsFn

NAMES = RUNTIMES[1:]  # the runtimes, without "auto"
REQUIRED_INPUTS = ("input_ids", "attention_mask")  # what `feed` always gives, with:
OPTIONAL_INPUTS = ("token_type_ids",)


@dataclass
class Model:
    """A model loaded on one runtime: what it takes and gives, and its logits function.

    `logits` is thread-safe: the Tagger runs `streams` batches at once from a thread pool.
    `check_logits` is the same function without the runtime's own error logging, for the
    checks that expect some runs to fail (model_checks.py)."""

    runtime: str
    file: Path
    inputs: dict[str, str]  # input name -> its type as ONNX names it: "tensor(int64)", ...
    output_shape: list[int | str]  # of the first output; a str is a symbolic dimension
    streams: int  # batches run at once: the one asked for, or the runtime's best
    logits: LogitsFn
    check_logits: LogitsFn = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.check_logits is None:
            self.check_logits = self.logits


def feed(inputs, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    """The input feed of a graph with these `inputs` (names): token_type_ids only if it takes
    them (DistilBERT and DeBERTa-v3 have none)."""
    arrays = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in inputs:
        arrays["token_type_ids"] = types
    return arrays


def missing(runtime: str, device: str = "cpu") -> str | None:
    """Why `runtime` cannot run models on `device` here; None when it can."""
    check_choice("runtime", runtime, NAMES)
    check_choice("device", device, DEVICES)
    if runtime == "openvino":
        if device != "cpu":
            return f"nerbatch runs OpenVINO on the CPU only, not --device {device}"
        from . import openvino_backend

        return openvino_backend.missing()
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                "--device cuda needs onnxruntime-gpu with CUDAExecutionProvider; this "
                f"onnxruntime has {ort.get_available_providers()} (pip install "
                "onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA)"
            )
    return None


def version(runtime: str) -> str:
    """The installed version of `runtime` (imports it)."""
    check_choice("runtime", runtime, NAMES)
    return __import__(runtime).__version__


def load(
    runtime: str,
    file: str | Path,
    *,
    precision: str = "f32",
    device: str = "cpu",
    threads: int = 0,
    streams: int = 1,
    padding: tuple[int, int] | None = None,
    compile_cache: Path | None = None,
) -> Model:
    """`file` (ONNX, or for OpenVINO an IR .xml too) on `runtime`.

    `threads`: the total for this model (0: every core); `streams`: batches run at once, each
    on threads / streams cores (0: the runtime's best). `precision` is OpenVINO's inference
    precision ("f32" or "bf16"; ONNX Runtime runs a file as it is). `padding` (pad id, window)
    lets OpenVINO pad batches to a few shapes. `compile_cache`: a directory where OpenVINO keeps
    the compiled model for the next load (its CACHE_DIR; ONNX Runtime ignores it). A file the
    runtime cannot load is a BundleError."""
    why = missing(runtime, device)
    if why is not None:
        raise BundleError(why)
    file = Path(file)
    if runtime == "openvino":
        from . import openvino_backend

        inputs, shape, streams, logits = openvino_backend.load(
            file, precision, threads, streams, padding, feed, compile_cache
        )
        return Model("openvino", file, inputs, shape, streams, logits)
    return _load_onnxruntime(file, device, threads, streams)


def _load_onnxruntime(file: Path, device: str, threads: int, streams: int) -> Model:
    import onnxruntime as ort

    streams = streams or 1  # ONNX Runtime's best: one run on every core
    total = threads or os.cpu_count() or 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if streams == 1 else max(1, total // streams)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers = ["CUDAExecutionProvider", *providers]
    try:
        session = ort.InferenceSession(str(file), options, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types: report any of them
        raise BundleError(f"ONNX Runtime cannot load {file}: {e}") from e
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = session.get_outputs()
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failing check run is reported by the check; not by ORT too
    return Model(
        "onnxruntime",
        file,
        inputs,
        list(outputs[0].shape) if outputs else [],
        streams,
        _session_logits(session, inputs, None),
        _session_logits(session, inputs, quiet),
    )


def _session_logits(session, inputs: dict[str, str], run_options) -> LogitsFn:
    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        arrays = feed(inputs, ids, mask, types)
        return session.run(None, arrays, run_options)[0].astype(np.float32, copy=False)

    return logits
