"""`nerbatch export`: a training checkpoint -> a checked ONNX model bundle.

Exporter: `torch.onnx.export` (TorchScript tracer, opset 17) with eager attention, because ONNX
Runtime's transformer optimizer recognises that graph and fuses it (Attention, SkipLayerNorm,
BiasGelu), which the int8 quantiser then turns into QAttention/MatMulInteger. Variants:
fp32 (the fused graph), int8 (dynamic quantisation, per-channel weights), fp16 (for GPUs).

Every variant is run against PyTorch on dev sentences: max |logit difference|, argmax agreement
and dev F1 go into bundle.json, and a variant outside tolerance fails the export with one message
listing every disagreement (unless `keep_failed`, which keeps it with a warning).

`export` is three steps, each callable on its own: `build_variants` (the ONNX files),
`validate_variants` (every problem at once, never an exception for a bad variant) and
`write_bundle`. What the libraries it drives say (ONNX Runtime's quantizer and optimizer,
transformers' loading bars, Python warnings) goes to this module's debug log, and is repeated
as warnings if the export fails (`ThirdPartyLogs`). It does not train (`train.py`), read the
checkpoint itself (`checkpoint.py`) or load bundles for annotation (`bundle.py`). Torch and
transformers are imported inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import backends
from .bundle import BUNDLE_FILE, FORMAT_VERSION, sha256_of
from .checkpoint import load_checkpoint, torch_logits_fn, usable_positions
from .choices import DEFAULT_VARIANT, INT8_OPS, NATIVE_RUNTIME, VARIANT_FILES, WEIGHT_FILES
from .conll import Document, read_conll, sentences_of, token_offsets
from .errors import ExportError, NerbatchError
from .features import TextEncoder
from .runtimes import export_variants
from .tagger import LogitsFn, Tagger, TaggerOptions, default_stride

log = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
FALLBACK_SENTENCES = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn met officials of the European Commission in Brussels on Thursday .",
    "Shares of Apple Inc. rose 3 % in New York after Tim Cook spoke at the Moscone Center .",
    "Der Präsident Emmanuel Macron besuchte São Paulo und 東京 im Juni 2024 .",
]
# (input_ids, attention_mask, token_type_ids), each (batch, seq) int64.
Probe = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Tolerances:
    fp32_max_logit_diff: float = 1e-3
    int8_max_f1_drop: float = 0.003  # 0.3 F1 points
    openvino_max_f1_drop: float = 0.003
    fp16_max_f1_drop: float = 0.003
    fp16_max_logit_diff: float = 0.05  # used when there are no dev sentences to score
    fp32_min_argmax_agreement: float = 0.99  # within 1e-3 only near-ties can flip


@dataclass
class Validation:
    """What `validate_variants` found: bundle.json's `variants` entries, every problem (one
    line each, starting with the variant's name), and PyTorch's own dev and test F1."""

    variants: dict[str, dict]
    problems: list[str]
    reference_dev_f1: float | None = None
    reference_test_f1: float | None = None

    def unusable(self) -> list[str]:
        """Variants that could not be compared at all (they fail to run, or their logits have
        the wrong shape): not even --keep-failed keeps them."""
        return [v for v, entry in self.variants.items() if entry["max_abs_logit_diff"] is None]


class ThirdPartyLogs(logging.Handler):
    """While in use, what other libraries log (warnings, through the root logger), Python
    warnings and transformers' messages and progress bars are kept out of the terminal: each
    goes to nerbatch's debug log (`nerbatch --verbose`), and `replay` repeats them as warnings
    when the export fails, so that nothing that might explain a failure is lost. Handlers a
    caller put on the root logger still see them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.heard: list[tuple[str, str]] = []  # (library, message)
        self.stack = contextlib.ExitStack()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "ner_batch" or record.name.startswith("ner_batch."):
            return  # our own, when the ner_batch logger propagates (a library caller)
        self.relay(record.name, record.getMessage())

    def relay(self, library: str, message: str) -> None:
        self.heard.append((library, message))
        log.debug("%s: %s", library, message, extra={"event": "third_party", "library": library})

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.relay("py.warnings", f"{category.__name__}: {message} ({filename}:{lineno})")

    def __enter__(self) -> ThirdPartyLogs:
        root = logging.getLogger()
        root.addHandler(self)  # also keeps logging.warning() from adding a stderr handler
        self.stack.callback(root.removeHandler, self)
        self.stack.enter_context(warnings.catch_warnings())  # restores showwarning on exit
        warnings.showwarning = self._warning
        self.stack.enter_context(_transformers_quiet())
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def replay(self) -> None:
        """Repeat what was heard as warnings, unless the debug log showed it already."""
        if log.isEnabledFor(logging.DEBUG):
            return
        for library, message in self.heard:
            log.warning("%s said: %s", library, message, extra={"event": "third_party"})


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' messages through the root logger (so ThirdPartyLogs gets them) and its
    progress bars off ("Loading weights"), each as it was afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # not installed: export fails later with its own clear error
        yield
        return
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    try:
        yield
    finally:
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        if bars:
            hf_logging.enable_progress_bar()


def quiet_third_party(function):
    """Run `function` under ThirdPartyLogs, replaying what was heard if it fails."""

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with ThirdPartyLogs() as heard:
            try:
                return function(*args, **kwargs)
            except BaseException:
                heard.replay()
                raise

    return quiet


@quiet_third_party
def export(
    checkpoint: str | Path,
    out: str | Path,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    variants: tuple[str, ...] | None = None,
    stride: int | None = None,
    keep_failed: bool = False,
    tolerances: Tolerances | None = None,
    max_dev_sentences: int | None = None,
    silent: bool = True,
    int8_ops: str = "matmul",
    max_length: int | None = None,
) -> dict:
    """Export, optimise, quantise, validate; write the bundle and return its bundle.json.
    (Longer than our usual functions: it is the one place that reads top to bottom as the
    export's steps, each a call; its options are the CLI's, one parameter each.)

    `checkpoint`: a directory `nerbatch train` wrote, or any Hugging Face token classifier with a
    fast tokenizer (a `save_pretrained` / `Trainer` directory, or a Hub id). `max_length`: the
    bundle's window (default: the training window, or for other models their positions, at
    most 512).

    `variants`: which to build (fp32 always); default fp32, int8, fp16, and openvino when
    OpenVINO and NNCF are installed (the `[openvino]` extra).

    `int8_ops`: what the int8 variant quantizes (INT8_OPS): "matmul" (default, the accurate
    one) or "matmul+attention" (the fused attention's Q/K/V projections as well: about 20%
    more tokens/s on AVX2 CPUs for about 0.25 test F1 on our MiniLM)."""
    tolerances = tolerances or Tolerances()
    if int8_ops not in INT8_OPS:
        raise NerbatchError(f"int8_ops must be one of {sorted(INT8_OPS)}, got {int8_ops!r}")
    out = Path(out)
    # Before the checkpoint loads: a variant that cannot be built fails at once.
    if variants is None:
        variants = export_variants()  # openvino only where OpenVINO and NNCF are installed
    elif "openvino" in variants:
        _require_openvino()
    if "fp32" not in variants:
        raise NerbatchError("the fp32 variant is always exported (the others derive from it)")
    model, encoder, meta = load_checkpoint(checkpoint, max_length)
    dev = dev or _existing(meta.get("config", {}).get("dev"))
    dev_documents = _dev_documents(dev, max_dev_sentences)
    max_length = meta["max_length"]
    stride = default_stride(max_length) if stride is None else stride
    calibration = None
    if "openvino" in variants:
        texts = calibration_texts(dev_documents, meta.get("config", {}).get("train"))
        calibration = calibration_feeds(encoder, meta["labels"], (max_length, stride), texts)

    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    started = time.monotonic()
    built = build_variants(checkpoint, staging, variants, int8_ops, encoder, calibration)
    files = built.files

    # Validation: the same tagger code over each backend.
    validation = validate_variants(
        files,
        torch_logits_fn(model),
        probe_batch(encoder, dev_documents),
        encoder,
        meta["labels"],
        max_length,
        stride,
        dev_documents=dev_documents,
        test_documents=read_conll(test) if test else None,
        tolerances=tolerances,
        silent=silent,
    )
    if validation.problems:
        _fail_or_keep(validation, keep_failed, staging)
    for variant, file in files.items():
        validation.variants[variant]["sha256"] = sha256_of(file)
        validation.variants[variant].update(built.notes.get(variant, {}))
    if "int8" in validation.variants:
        validation.variants["int8"]["int8_ops"] = int8_ops
    provenance = {
        "dev_f1": validation.reference_dev_f1,
        "test_f1": validation.reference_test_f1,
        "dev": str(dev) if dev else None,
        "test": str(test) if test else None,
    }
    return write_bundle(
        out,
        staging,
        encoder,
        meta,
        validation.variants,
        graph={"opset": 17, "fused_ops": built.fused, "inputs": built.inputs, "output": "logits"},
        window=(max_length, stride),
        vocab_size=int(model.config.vocab_size),
        reference=provenance,
        started=started,
        max_positions=usable_positions(model.config),
    )


@dataclass
class Built:
    """What `build_variants` wrote: {variant: file}, the fusion counts, the graph's input names
    and, per variant, extra bundle.json fields (the IR's weights file, how it was quantized)."""

    files: dict[str, Path]
    fused: dict[str, int]
    inputs: list[str]
    notes: dict[str, dict]


def _require_openvino() -> None:
    from . import openvino_backend

    missing = openvino_backend.missing(quantizer=True)
    if missing:
        raise NerbatchError(f"the openvino variant needs OpenVINO and NNCF: {missing}")


def build_variants(
    checkpoint: str | Path,
    staging: Path,
    variants: tuple[str, ...],
    int8_ops: str = "matmul",
    encoder: TextEncoder | None = None,
    calibration: list[dict] | None = None,
) -> Built:
    """Write the file of each variant into `staging`: fp32 always (ONNX Runtime's transformer
    fusions where they hold for the architecture, else the plain graph), int8 and fp16 when
    asked, both derived from it, and openvino (NNCF int8 of the plain graph, calibrated on
    `calibration`: input feeds as annotate forms them, see `calibration_feeds`)."""
    # Eager attention traces to plain MatMul/Softmax, which ORT's optimizer fuses.
    from transformers import AutoModelForTokenClassification

    export_model = AutoModelForTokenClassification.from_pretrained(
        checkpoint, attn_implementation="eager"
    ).eval()
    raw = staging / "model.raw.onnx"
    inputs = _torch_export(export_model, raw)
    files = {"fp32": staging / VARIANT_FILES["fp32"]}
    notes: dict[str, dict] = {}
    fused = _optimize(raw, files["fp32"], export_model, inputs, encoder)
    if "openvino" in variants:
        feeds = [{k: v for k, v in f.items() if k in inputs} for f in calibration or []]
        files["openvino"], notes["openvino"] = _openvino_int8(raw, staging, feeds)
    raw.unlink()
    if "int8" in variants:
        files["int8"] = staging / VARIANT_FILES["int8"]
        _quantize(files["fp32"], files["int8"], INT8_OPS[int8_ops])
    if "fp16" in variants:
        files["fp16"] = staging / VARIANT_FILES["fp16"]
        _to_fp16(files["fp32"], files["fp16"], export_model.config, fused_graph=bool(fused))
    return Built(files, fused, inputs, notes)


# Node-name patterns NNCF leaves in f32 in the openvino variant. None: keeping the token
# classifier in f32 measured no better (3-epoch MiniLM: test F1 88.03 vs 88.06 quantized, dev
# 92.48 vs 92.46, 20.4k vs 21.3k tokens/s; docs/openvino.md), so NNCF quantizes it with the rest.
KEEP_FP32: list[str] = []


def _openvino_int8(raw: Path, staging: Path, calibration: list[dict]) -> tuple[Path, dict]:
    from . import openvino_backend

    if not calibration:
        raise ExportError("the openvino variant needs calibration sentences")
    target = staging / VARIANT_FILES["openvino"]
    started = time.monotonic()
    log.info("openvino: NNCF int8 quantization on %d calibration batches", len(calibration))
    try:
        info = openvino_backend.quantize(raw, target, calibration, keep_fp32=KEEP_FP32)
    except Exception as e:  # broad: conversion and NNCF fail in many ways on odd graphs
        raise ExportError(
            f"the openvino variant cannot be built for this model ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}); export without it (--variants fp32,int8,fp16)"
        ) from e
    weights = staging / WEIGHT_FILES["openvino"]
    info["seconds"] = round(time.monotonic() - started, 1)
    info["runtime"] = "openvino"
    info["precision"] = "int8"
    return target, {"weights": {"file": weights.name, "sha256": sha256_of(weights)}, **info}


CALIBRATION_SENTENCES = 300


def calibration_texts(dev_documents: list[Document] | None, train: str | None) -> list[str]:
    """Up to CALIBRATION_SENTENCES sentences: dev, else the checkpoint's training file, else
    the built-in sentences (with a warning)."""
    documents = dev_documents or (read_conll(train) if _existing(train) else None)
    if not documents:
        log.warning("openvino: no dev or train sentences: calibrating on built-in sentences only")
        return list(FALLBACK_SENTENCES)
    sentences = sentences_of(documents)[:CALIBRATION_SENTENCES]
    return [token_offsets(s.tokens)[0] for s in sentences]


def calibration_feeds(
    encoder: TextEncoder, labels: list[str], window: tuple[int, int], texts: list[str]
) -> list[dict[str, np.ndarray]]:
    """The model inputs annotate would feed for these texts (one document each, annotate's
    default batching), captured from the Tagger itself: calibration sees what runs will."""
    feeds = []

    def capture(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return np.zeros((*ids.shape, len(labels)), dtype=np.float32)

    Tagger(encoder, labels, capture, *window, TaggerOptions()).tag(texts)
    return feeds


def validate_variants(
    files: dict[str, Path],
    reference_logits_fn: LogitsFn,
    probe: Probe,
    encoder: TextEncoder,
    labels: list[str],
    max_length: int,
    stride: int,
    dev_documents: list[Document] | None = None,
    test_documents: list[Document] | None = None,
    tolerances: Tolerances | None = None,
    silent: bool = True,
) -> Validation:
    """Run every ONNX variant against the reference (PyTorch) and collect every problem.

    On the `probe` batch: the logits' shape, max |logit difference| and argmax agreement over
    real (unmasked) sub-tokens; on dev (and test) documents: F1 through the same Tagger as
    `score`, and the drop from the reference's dev F1. A variant that is out of tolerance, fails
    to run or has logits of the wrong shape gives problem lines, never an exception (as optimum's
    `validate_model_outputs` reports every mismatch at once)."""
    tolerances = tolerances or Tolerances()

    def f1_of(logits_fn: LogitsFn, documents: list[Document]) -> float:
        from .score import evaluate_tagger, scoring_options

        tagger = Tagger(encoder, labels, logits_fn, max_length, stride, scoring_options())
        return evaluate_tagger(tagger, documents)["default"]["micro"]["f1"]

    reference_logits = reference_logits_fn(*probe)  # (batch, seq, labels)
    validation = Validation({}, [])
    if dev_documents:
        validation.reference_dev_f1 = f1_of(reference_logits_fn, dev_documents)
    if test_documents:
        validation.reference_test_f1 = f1_of(reference_logits_fn, test_documents)
    mask = probe[1].astype(bool)
    for variant, file in files.items():
        entry = {
            "file": file.name,
            "max_abs_logit_diff": None,
            "argmax_agreement": None,
            "checked_on": f"{int(mask.sum())} sub-tokens of {len(probe[0])} "
            + ("dev sentences" if dev_documents else "built-in sentences"),
            "device_checked": "cpu",
        }
        validation.variants[variant] = entry
        try:
            logits_fn = _logits_fn_of(variant, file, encoder.pad_id, max_length)
            logits = logits_fn(*probe)
        except Exception as e:  # broad: ORT raises its own classes (Fail, InvalidArgument, ...)
            entry["status"] = "does not run"
            validation.problems.append(f"{variant}: does not run on the probe batch: {e}")
            continue
        compared, problems = _compare_logits(logits, reference_logits, mask)
        entry.update(compared)
        validation.problems += [f"{variant}: {p}" for p in problems]
        if not compared:
            entry["status"] = "logits of the wrong shape"
            continue
        if dev_documents:
            entry["dev_f1"] = f1_of(logits_fn, dev_documents)
            entry["dev_f1_drop"] = validation.reference_dev_f1 - entry["dev_f1"]
        if test_documents:
            entry["test_f1"] = f1_of(logits_fn, test_documents)
        validation.problems += [f"{variant}: {p}" for p in _check(variant, entry, tolerances)]
        entry["status"] = "ok"
        if not silent:
            log.info(
                "%s: max|Δlogit| %.2e, argmax agreement %.4f, dev F1 %s",
                variant,
                entry["max_abs_logit_diff"],
                entry["argmax_agreement"],
                entry.get("dev_f1"),
            )
    return validation


def write_bundle(
    out: Path,
    staging: Path,
    encoder: TextEncoder,
    meta: dict,
    results: dict[str, dict],
    graph: dict,
    window: tuple[int, int],
    vocab_size: int,
    reference: dict,
    started: float,
    max_positions: int | None = None,
) -> dict:
    """Write bundle.json beside the staged variant files (`results`: their bundle.json entries,
    sha256 included) and the checkpoint's tokenizer, then move them all into `out` (bundle.json
    last) and remove the files of variants not exported this time. `max_positions`: the longest
    window the model takes (`usable_positions`), which annotate checks --max-length against;
    None when unknown (annotate then finds it by running the model)."""
    tokenizer_file = staging / "tokenizer.json"
    encoder.tokenizer.save(str(tokenizer_file))
    max_length, stride = window
    bundle = {
        "format_version": FORMAT_VERSION,
        "bundle_id": f"{out.name}-{results['fp32']['sha256'][:12]}",
        "labels": meta["labels"],
        "scheme": meta.get("scheme", "IOB2"),
        "max_length": max_length,
        "stride": stride,
        "max_positions": max_positions,
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": sha256_of(tokenizer_file),
            "vocab_size": vocab_size,
            "word_shapes": meta["word_shapes"],
            "shapes": meta.get("shapes"),
            "word_rule": encoder.word_rule,
            "words": (
                "whitespace-delimited words (never cut)"
                if encoder.whole_words
                else "the transformers pipeline's words"
                if encoder.word_rule == "pipeline"
                else "pre-tokenizer pieces"
            )
            + "; a word's label is its first sub-token's",
        },
        "architecture": meta.get("architecture"),
        "base_model": meta.get("base_model"),
        "train_data": meta.get("train_data"),
        "graph": graph,
        "variants": results,
        "reference": reference,
        "default_variant": dict(DEFAULT_VARIANT),
        "versions": _versions(),
        "export_seconds": round(time.monotonic() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (staging / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2))
    # Swap the staged files in; bundle.json last so a reader never sees a half-written bundle.
    for file in sorted(staging.iterdir(), key=lambda p: p.name == BUNDLE_FILE):
        file.replace(out / file.name)
    for variant in set(VARIANT_FILES) - set(results):
        (out / VARIANT_FILES[variant]).unlink(missing_ok=True)
        if variant in WEIGHT_FILES:
            (out / WEIGHT_FILES[variant]).unlink(missing_ok=True)
    staging.rmdir()
    return bundle


def _dev_documents(dev: str | Path | None, limit: int | None) -> list[Document] | None:
    documents = read_conll(dev) if dev else None
    if documents and limit:
        documents = _first_sentences(documents, limit)
    if not dev:
        log.warning("no dev data: variants are checked on logits of built-in sentences only")
    return documents


def _fail_or_keep(validation: Validation, keep_failed: bool, staging: Path) -> None:
    """Raise one ExportError listing every problem (removing the staged files), or with
    `keep_failed` log it and mark the variants kept; an unusable variant is never kept."""
    message = "exported variants disagree with PyTorch beyond tolerance:\n  " + "\n  ".join(
        validation.problems
    )
    unusable = validation.unusable()
    if not keep_failed or unusable:
        shutil.rmtree(staging, ignore_errors=True)
        hint = (
            f"\n(--keep-failed cannot keep {', '.join(unusable)}: no logits to compare)"
            if keep_failed
            else "\n(pass --keep-failed to keep them with a warning)"
        )
        raise ExportError(message + hint)
    log.warning("%s\nkept because --keep-failed was given", message)
    for p in validation.problems:
        validation.variants[p.split(":")[0]]["status"] = (
            "out of tolerance (kept with --keep-failed)"
        )


def _existing(path: str | None) -> str | None:
    return path if path and Path(path).is_file() else None


def _first_sentences(documents: list[Document], limit: int) -> list[Document]:
    kept, total = [], 0
    for document in documents:
        if total >= limit:
            break
        sentences = document.sentences[: limit - total]
        kept.append(Document(document.doc_id, sentences))
        total += len(sentences)
    return kept


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    from . import __version__

    versions = {
        "nerbatch": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import openvino

        versions["openvino"] = openvino.__version__
    except ImportError:
        pass
    return versions


def _logits_fn_of(variant: str, file: Path, pad_id: int, max_length: int) -> LogitsFn:
    """A variant file's LogitsFn on the CPU, on the runtime that runs it (OpenVINO for the IR,
    in f32; ONNX Runtime for the others)."""
    runtime = NATIVE_RUNTIME[variant]
    return backends.load(runtime, file, padding=(pad_id, max_length)).logits


def _onnx_logits_fn(file: Path) -> LogitsFn:
    return backends.load("onnxruntime", file).logits


def _torch_export(model, path: Path) -> list[str]:
    """The model as an ONNX graph taking the inputs its forward has (DistilBERT and DeBERTa
    without token types have no token_type_ids); returns their names."""
    import inspect
    import warnings

    import torch

    accepted = inspect.signature(model.forward).parameters
    names = [n for n in INPUTS if n in accepted]
    if getattr(model.config, "type_vocab_size", 1) == 0 and "token_type_ids" in names:
        names.remove("token_type_ids")  # DeBERTa-v2/v3: accepted, but no embedding for it

    class Logits(torch.nn.Module):  # positional ONNX inputs -> the model's keyword arguments
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(names, tensors, strict=True))).logits

    example = torch.randint(0, model.config.vocab_size, (2, 16))
    tensors = {
        "input_ids": example,
        "attention_mask": torch.ones_like(example),
        "token_type_ids": torch.zeros_like(example),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "logits"]}
    with warnings.catch_warnings():
        # The tracer warns about Python bools in attention code paths that do not depend on
        # shapes for an encoder with a padding mask; parity is checked below on real inputs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                Logits().eval(),
                tuple(tensors[n] for n in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        except Exception as e:  # broad: the tracer raises many kinds for unsupported code
            raise ExportError(
                f"the {type(model).__name__} architecture cannot be exported to ONNX here "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]})"
            ) from e
    return names


# Architectures whose graphs ONNX Runtime's BERT fusions know (Attention, SkipLayerNormalization,
# BiasGelu, EmbedLayerNormalization); the fused graph is still checked against the plain one.
FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"}


def _ort_optimizer(source: Path, config, opt_level: int):
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=opt_level,
    )


def _optimize(source: Path, target: Path, model, inputs: list[str], encoder) -> dict:
    """ORT's BERT fusions where they hold: for an architecture they know (FUSABLE), the fused
    graph is kept only if its logits equal the plain graph's on a probe batch; otherwise the
    plain graph is the fp32 variant (ONNX Runtime still applies its generic optimisations when
    it loads it). Returns the fusion counts ({} for the plain graph)."""
    if getattr(model.config, "model_type", None) in FUSABLE:
        try:
            optimized = _ort_optimizer(source, model.config, opt_level=1)
            optimized.save_model_to_file(str(target))
            fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        except Exception as e:  # broad: the optimizer's pattern matching fails in many ways
            log.warning("ONNX Runtime's fusions failed (%s): exporting the plain graph", e)
        else:
            if _same_logits(source, target, encoder):
                return fused
            log.warning(
                "the fused graph of this %s differs from the plain one: exporting the plain graph",
                type(model).__name__,
            )
    shutil.copyfile(source, target)
    return {}


def _same_logits(plain: Path, fused: Path, encoder) -> bool:
    if encoder is None:
        return True
    probe = probe_batch(encoder, None)
    reference = _onnx_logits_fn(plain)(*probe)
    logits = _onnx_logits_fn(fused)(*probe)
    compared, problems = _compare_logits(logits, reference, probe[1].astype(bool))
    return bool(compared) and not problems and compared["max_abs_logit_diff"] <= 1e-4


def _quantize(source: Path, target: Path, op_types: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights: per-tensor int8 cost 0.66 test F1 on our MiniLM, per-channel 0.04.
    # By default only the MatMuls (feed-forward, attention output, classifier): on the 8-epoch
    # MiniLM, also quantizing the fused Attention (QAttention) cost about 0.25 test F1 at any
    # batch size, and the embeddings (Gather) another 0.3 for no speed (see choices.INT8_OPS).
    # The fused graph has com.microsoft ops that ONNX shape inference cannot type: say float.
    quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=op_types,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _to_fp16(source: Path, target: Path, config, fused_graph: bool = True) -> None:
    if fused_graph:
        model = _ort_optimizer(source, config, opt_level=0)
    else:
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(str(source)))
    # Inputs stay int64 and logits come out as float32, so callers are the same for all variants.
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))


def probe_batch(encoder: TextEncoder, documents: list[Document] | None) -> Probe:
    """A padded batch of up to 64 sentences (dev if given), for the logit comparison."""
    texts = (
        [token_offsets(s.tokens)[0] for s in sentences_of(documents)[:64]]
        if documents
        else FALLBACK_SENTENCES
    )
    encoded = encoder.encode_batch(texts)
    prefix, suffix = encoder.prefix_ids, encoder.suffix_ids
    width = min(max(len(e) for e in encoded), 126) + encoder.n_special
    ids = np.full((len(texts), width), encoder.pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        n = min(len(e), width - encoder.n_special)
        tokens = prefix + e.ids[:n].tolist() + suffix
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
        types[row, len(prefix) : len(prefix) + n] = e.type_ids[:n]
    return ids, mask, types


def _compare_logits(
    logits: np.ndarray, reference: np.ndarray, mask: np.ndarray
) -> tuple[dict, list[str]]:
    """Max |logit difference| and argmax agreement over the real (mask) sub-tokens, and the
    problems that are not a matter of tolerance; nothing to compare if the shapes differ."""
    if logits.shape != reference.shape:  # (batch, seq, labels) each
        return {}, [
            f"logits have shape {tuple(logits.shape)}; expected {tuple(reference.shape)} "
            "(batch, sequence, labels) like PyTorch"
        ]
    not_finite = int((~np.isfinite(logits[mask])).sum())
    compared = {
        "max_abs_logit_diff": float(np.abs(logits - reference)[mask].max()),
        "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1))[mask].mean()),
    }
    return compared, [f"{not_finite} logits are NaN or infinite"] if not_finite else []


def _check(variant: str, entry: dict, t: Tolerances) -> list[str]:
    problems = []
    if variant == "fp32" and entry["max_abs_logit_diff"] > t.fp32_max_logit_diff:
        problems.append(
            f"max |logit difference| {entry['max_abs_logit_diff']:.2e} > {t.fp32_max_logit_diff:g}"
        )
    if variant == "fp32" and entry["argmax_agreement"] < t.fp32_min_argmax_agreement:
        problems.append(
            f"argmax agreement {entry['argmax_agreement']:.4f} < {t.fp32_min_argmax_agreement:g}"
        )
    limits = {
        "int8": t.int8_max_f1_drop,
        "fp16": t.fp16_max_f1_drop,
        "openvino": t.openvino_max_f1_drop,
    }
    if variant in limits:
        if "dev_f1_drop" in entry:
            if entry["dev_f1_drop"] > limits[variant]:
                problems.append(
                    f"dev F1 {100 * entry['dev_f1']:.2f} is "
                    f"{100 * entry['dev_f1_drop']:.2f} points below PyTorch "
                    f"(tolerance {100 * limits[variant]:.2f})"
                )
        elif variant == "fp16" and entry["max_abs_logit_diff"] > t.fp16_max_logit_diff:
            problems.append(
                f"max |logit difference| {entry['max_abs_logit_diff']:.2e} > "
                f"{t.fp16_max_logit_diff:g}"
            )
    return problems
