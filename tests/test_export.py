"""Export validation on tampered ONNX files, without a full export: `validate_variants` against
the tiny checkpoint's PyTorch logits reports every problem at once (logit difference, argmax
agreement, dev F1 drop, NaN logits, logits of the wrong shape, a file that does not run) and
never raises; then `export` itself turns problems into one ExportError, or keeps them with
`keep_failed`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from ner_batch.checkpoint import load_checkpoint, torch_logits_fn  # noqa: E402
from ner_batch.conll import read_conll  # noqa: E402
from ner_batch.errors import ExportError  # noqa: E402
from ner_batch.export import Tolerances, export, probe_batch, validate_variants  # noqa: E402


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tiny_conll):
    """(PyTorch LogitsFn, encoder, meta, dev documents, probe batch) of the tiny checkpoint."""
    model, encoder, meta = load_checkpoint(tiny_checkpoint)
    documents = read_conll(tiny_conll)
    return torch_logits_fn(model), encoder, meta, documents, probe_batch(encoder, documents)


def validate(reference, files: dict[str, Path], tolerances: Tolerances | None = None):
    logits_fn, encoder, meta, documents, probe = reference
    return validate_variants(
        files,
        logits_fn,
        probe,
        encoder,
        meta["labels"],
        meta["max_length"],
        8,
        dev_documents=documents,
        tolerances=tolerances,
    )


def output_node(graph):
    """The node that writes the graph's `logits` output (the classifier's bias Add)."""
    return next(n for n in graph.node if "logits" in n.output)


def shift_label(source: Path, target: Path, label: int, shift: float = 100.0) -> Path:
    """A copy of an fp32 ONNX model whose classifier bias favours `label` by `shift`: every
    sub-token's argmax becomes `label`."""
    model = onnx.load(source)
    node = output_node(model.graph)
    bias = next(i for i in model.graph.initializer if i.name in node.input)
    values = onnx.numpy_helper.to_array(bias).copy()  # (labels,)
    values[label] += shift
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, target)
    return target


def double_labels(source: Path, target: Path) -> Path:
    """A copy whose logits are (batch, seq, 2 * labels): the real ones concatenated twice."""
    model = onnx.load(source)
    graph = model.graph
    node = output_node(graph)
    node.output[list(node.output).index("logits")] = "logits_once"
    graph.node.append(
        onnx.helper.make_node("Concat", ["logits_once", "logits_once"], ["logits"], axis=-1)
    )
    dim = graph.output[0].type.tensor_type.shape.dim[2]
    dim.dim_value = 2 * dim.dim_value
    onnx.save(model, target)
    return target


def test_a_faithful_variant_passes(tiny_bundle, reference):
    validation = validate(reference, {"fp32": tiny_bundle / "model.onnx"})
    assert validation.problems == []
    entry = validation.variants["fp32"]
    assert entry["status"] == "ok" and entry["argmax_agreement"] == 1.0
    assert entry["max_abs_logit_diff"] < 1e-3
    assert entry["dev_f1"] == pytest.approx(validation.reference_dev_f1)
    assert validation.unusable() == []


def test_every_problem_of_every_variant_at_once(tiny_bundle, reference, tmp_path):
    logits_fn, _, meta, _, probe = reference
    mask = probe[1].astype(bool)
    reference_argmax = logits_fn(*probe).argmax(-1)[mask]
    # The label PyTorch predicts least often on the probe: favouring it flips most argmaxes.
    rare = int(np.argmin(np.bincount(reference_argmax, minlength=len(meta["labels"]))))
    source = tiny_bundle / "model.onnx"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an ONNX model")
    files = {
        "fp32": shift_label(source, tmp_path / "shifted.onnx", rare),
        "int8": shift_label(source, tmp_path / "all_o.onnx", meta["labels"].index("O")),
        "fp16": double_labels(source, tmp_path / "doubled.onnx"),
        "extra": garbage,
    }

    validation = validate(reference, files)  # no exception for any of them

    problems = validation.problems
    assert validation.reference_dev_f1 > 0.003, "the tiny model should find some entities"
    assert [p.split(":")[0] for p in problems] == ["fp32", "fp32", "int8", "fp16", "extra"]
    assert problems[0].startswith("fp32: max |logit difference| ") and "> 0.001" in problems[0]
    assert problems[1].startswith("fp32: argmax agreement ") and "< 0.99" in problems[1]
    assert validation.variants["fp32"]["argmax_agreement"] < 0.5
    assert problems[2].startswith("int8: dev F1 0.00 is ")
    assert "points below PyTorch (tolerance 0.30)" in problems[2]
    n_labels = len(meta["labels"])
    batch, seq = probe[0].shape
    assert problems[3] == (
        f"fp16: logits have shape ({batch}, {seq}, {2 * n_labels}); expected "
        f"({batch}, {seq}, {n_labels}) (batch, sequence, labels) like PyTorch"
    )
    assert problems[4].startswith("extra: does not run on the probe batch: ")
    assert validation.unusable() == ["fp16", "extra"]
    assert validation.variants["fp16"]["max_abs_logit_diff"] is None
    assert "dev_f1" not in validation.variants["fp16"]


def test_nan_logits_are_a_problem(tiny_bundle, reference, tmp_path):
    _, _, _, _, probe = reference
    nan = shift_label(tiny_bundle / "model.onnx", tmp_path / "nan.onnx", 0, shift=float("nan"))
    validation = validate(reference, {"fp32": nan})
    n_real = int(probe[1].sum())  # every real sub-token has one NaN logit (label 0)
    assert f"fp32: {n_real} logits are NaN or infinite" in validation.problems


def test_export_fails_with_every_problem_unless_kept(tiny_checkpoint, tiny_conll, tmp_path):
    strict = Tolerances(fp32_max_logit_diff=-1.0)  # any difference at all is out of tolerance
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as failed:
        export(tiny_checkpoint, out, dev=tiny_conll, variants=("fp32",), tolerances=strict)
    message = str(failed.value)
    assert message.startswith("exported variants disagree with PyTorch beyond tolerance:\n  fp32: ")
    assert message.endswith("\n(pass --keep-failed to keep them with a warning)")
    assert not (out / "bundle.json").exists() and not (out / ".staging").exists()

    bundle = export(
        tiny_checkpoint,
        out,
        dev=tiny_conll,
        variants=("fp32",),
        tolerances=strict,
        keep_failed=True,
    )
    assert bundle["variants"]["fp32"]["status"] == "out of tolerance (kept with --keep-failed)"
    assert json.loads((out / "bundle.json").read_text()) == bundle
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "tokenizer.json"]
