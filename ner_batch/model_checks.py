"""Checks of a bundle's model as loaded on a runtime (backends.Model), before any work: the graph
takes the inputs nerbatch feeds and gives one logit per label of bundle.json, it runs, and it
takes the window a run will use (the position-limit search).

Written once against `backends.Model`, so ONNX Runtime and OpenVINO are checked alike. What is
checked in bundle.json itself (fields, checksums) is bundle.py's.
"""

from __future__ import annotations

import numpy as np

from .backends import OPTIONAL_INPUTS, REQUIRED_INPUTS, Model
from .bundle import BUNDLE_FILE, MIN_MAX_LENGTH, Bundle
from .errors import BundleError, OptionError
from .features import TextEncoder

INT64 = "tensor(int64)"


def check_graph(bundle: Bundle, model: Model) -> None:
    """The model's inputs are the ones backends.feed gives, and its logits have one column per
    label of bundle.json (when the graph states that number)."""
    name = model.file.name
    problems = [f"has no input {n!r}" for n in REQUIRED_INPUTS if n not in model.inputs]
    for input_name, kind in model.inputs.items():
        if input_name not in REQUIRED_INPUTS + OPTIONAL_INPUTS:
            problems.append(f"needs an input {input_name!r} that nerbatch does not feed")
        elif kind != INT64:
            problems.append(f"takes {input_name!r} as {kind}, not {INT64}")
    if problems:
        raise BundleError(
            f"bundle {bundle.path}: {name} {'; '.join(problems)} (nerbatch feeds "
            f"{', '.join(REQUIRED_INPUTS + OPTIONAL_INPUTS)}: int64, (batch, sequence))"
        )
    shape = model.output_shape
    if not shape or len(shape) != 3:
        raise BundleError(
            f"bundle {bundle.path}: {name} has output shape {shape or None}; expected logits "
            "(batch, sequence, labels)"
        )
    if isinstance(shape[-1], int):  # else symbolic: the run in check_runs checks it
        _check_label_count(bundle, shape[-1], name)


def _check_label_count(bundle: Bundle, n_outputs: int, name: str) -> None:
    if n_outputs != len(bundle.labels):
        raise BundleError(
            f"bundle {bundle.path}: the model has {n_outputs} output labels but {BUNDLE_FILE} "
            f"lists {len(bundle.labels)} ({name} and {BUNDLE_FILE} do not belong together: "
            "export the bundle again)"
        )


def check_runs(
    bundle: Bundle, model: Model, encoder: TextEncoder, max_length: int, chosen: bool
) -> None:
    """Run the model once before any work: that it runs at all and gives one logit per
    label (also when the graph's label dimension is symbolic), and, for a window longer than
    the one the bundle was exported and validated with or a bundle without a recorded
    `max_positions`, that it takes a window of `max_length`: a window longer than the
    model's positions fails here rather than on the first long document. `chosen`: whether the
    user chose the window (--max-length), who an error blames.

    Otherwise (Bundle.window checked max_length against `max_positions`) the run is one (1, 10)
    window: measured 5 ms (int8) / 10 ms (fp32) for a MiniLM-L12-sized model on one
    thread, against 0.3-1.2 s to create its session. A full window costs one window's work
    (40-65 ms at 128, 0.2-0.3 s at 512 on that model); a window too long fails fast (< 1 ms:
    the position embedding is the first node), and the longest one that runs is then found
    by bisection, to name the limit. A graph that accepts longer inputs silently passes:
    for it only the recorded `max_positions` helps."""
    name = model.file.name
    unproven = bundle.max_positions is None or max_length > bundle.meta["max_length"]
    length = max_length if unproven else MIN_MAX_LENGTH
    error = _run_once(bundle, model, encoder, length)
    if error is None:
        return
    good = bundle.meta["max_length"] if bundle.meta["max_length"] < length else MIN_MAX_LENGTH
    if good >= length or _run_once(bundle, model, encoder, good) is not None:
        raise BundleError(
            f"bundle {bundle.path}: {name} does not run on a window of {length} sub-tokens: {error}"
        )
    good = _longest_window(bundle, model, encoder, good, length)
    why = f"{name} of bundle {bundle.path} fails on longer windows: {error}"
    if chosen:
        raise OptionError(
            f"--max-length {max_length} is longer than this model's {good} positions "
            f"({why}); use at most {good}"
        )
    raise BundleError(
        f"bundle {bundle.path}: max_length {max_length} in {BUNDLE_FILE} is longer than the "
        f"model's {good} positions ({why}); pass --max-length {good} or export it again"
    )


def _longest_window(bundle: Bundle, model: Model, encoder: TextEncoder, good: int, bad: int):
    """The longest window that runs, by bisection between `good` (runs) and `bad` (does not).
    Usual limits are tried first (a failed run is cheap, a successful one costs a window): 256
    or 512 positions take one successful run."""
    usual = [n + i for n in (8192, 4096, 2048, 1024, 512, 256, 128) for i in (1, 0)]
    while bad - good > 1:
        middle = next((n for n in usual if good < n < bad), (good + bad) // 2)
        if _run_once(bundle, model, encoder, middle) is None:
            good = middle
        else:
            bad = middle
    return good


def _run_once(bundle: Bundle, model: Model, encoder: TextEncoder, length: int) -> str | None:
    """The runtime's error for one (1, length) window of [CLS] [UNK]... [SEP], or None if it
    runs; logits of the wrong shape are a BundleError."""
    # Not padding: RoBERTa-style models give padding no position, so pads would always fit.
    vocab = encoder.tokenizer
    filler = vocab.token_to_id("[UNK]")
    if filler is None:
        filler = vocab.token_to_id("<unk>")
    if filler is None:
        filler = (encoder.pad_id + 1) % vocab.get_vocab_size()
    ids = np.full((1, length), filler, dtype=np.int64)
    ids[0, : len(encoder.prefix_ids)] = encoder.prefix_ids
    ids[0, length - len(encoder.suffix_ids) :] = encoder.suffix_ids
    try:
        logits = model.check_logits(ids, np.ones_like(ids), np.zeros_like(ids))
    except Exception as e:  # broad: runtimes raise their own classes (InvalidArgument, Fail, ...)
        return " ".join(str(e).split())
    if logits.shape[-1] != len(bundle.labels):
        _check_label_count(bundle, logits.shape[-1], model.file.name)
    if logits.shape[:2] != (1, length):
        raise BundleError(
            f"bundle {bundle.path}: {model.file.name} gives logits of shape {logits.shape} for "
            f"a window of shape (1, {length}); expected (1, {length}, {len(bundle.labels)})"
        )
    return None
