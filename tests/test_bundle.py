"""Model bundle integrity: load_bundle and Bundle.tagger refuse a bundle that is missing, of an
unknown format, corrupt, malformed or inconsistent with its model, with a message that says which
file or field and why; through the real CLI, before any output is written. Also --max-length
against the model's positions, recorded in bundle.json or found by running the model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import DOCS, copy_bundle, write_txt

from ner_batch.backends import Model
from ner_batch.bundle import BUNDLE_FILE, FORMAT_VERSION, load_bundle, sha256_of
from ner_batch.cli import cli
from ner_batch.errors import BundleError, NerbatchError
from ner_batch.model_checks import check_graph, check_runs
from ner_batch.runtimes import open_tagger


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return copy_bundle(tiny_bundle, tmp_path / "bundle")


def edit_meta(bundle, edit) -> None:
    meta_file = bundle / BUNDLE_FILE
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))


def test_tiny_bundle_is_consistent(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    meta = bundle.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert bundle.bundle_id
    assert bundle.labels[0] == "O" and "B-PER" in bundle.labels
    assert set(meta["variants"]) == {"fp32", "int8", "fp16"}
    for variant, entry in meta["variants"].items():
        assert sha256_of(tiny_bundle / entry["file"]) == entry["sha256"], variant
        bundle.verify(variant)
    assert sha256_of(tiny_bundle / meta["tokenizer"]["file"]) == meta["tokenizer"]["sha256"]
    assert bundle.resolve_variant("auto", "cpu") == "int8"
    assert bundle.resolve_variant("auto", "cuda") == "fp16"


def test_missing_bundle_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BundleError, match=r"model bundle .*nope does not exist"):
        load_bundle(missing)


def test_directory_without_bundle_json(tmp_path):
    with pytest.raises(BundleError, match=f"is not a model bundle: it has no {BUNDLE_FILE}"):
        load_bundle(tmp_path)


def test_bundle_json_not_json(bundle_copy):
    (bundle_copy / BUNDLE_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_format_version(bundle_copy, version):
    edit_meta(bundle_copy, lambda meta: meta.update(format_version=version))
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    assert f"format version {version!r} is not supported" in str(error.value)
    assert f"reads version {FORMAT_VERSION}" in str(error.value)


def test_missing_field(bundle_copy):
    edit_meta(bundle_copy, lambda meta: meta.pop("labels"))
    with pytest.raises(BundleError, match="lacks the field 'labels'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("file", ["model.onnx", "tokenizer.json"])
def test_corrupted_file_is_named(bundle_copy, file):
    path = bundle_copy / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    bundle = load_bundle(bundle_copy)  # bundle.json itself is fine
    with pytest.raises(BundleError) as error:
        open_tagger(bundle, variant="fp32")
    message = str(error.value)
    assert f"{file} does not match its checksum in {BUNDLE_FILE}" in message
    assert "export the bundle again" in message


def test_corrupted_variant_only_fails_when_used(bundle_copy):
    (bundle_copy / "model.int8.onnx").write_bytes(b"garbage")
    bundle = load_bundle(bundle_copy)
    open_tagger(bundle, variant="fp32", threads=1)  # fine: int8 is not used
    with pytest.raises(BundleError, match=re.escape("model.int8.onnx does not match")):
        open_tagger(bundle, variant="auto", device="cpu")


def test_missing_model_file(bundle_copy):
    (bundle_copy / "model.fp16.onnx").unlink()
    with pytest.raises(BundleError, match="is missing model.fp16.onnx"):
        open_tagger(load_bundle(bundle_copy), variant="fp16")


def test_unreadable_onnx_with_matching_checksum(bundle_copy):
    """A file that matches bundle.json but is not ONNX: ORT's own error, named."""
    (bundle_copy / "model.onnx").write_bytes(b"not onnx")
    edit_meta(
        bundle_copy,
        lambda meta: meta["variants"]["fp32"].update(sha256=sha256_of(bundle_copy / "model.onnx")),
    )
    with pytest.raises(BundleError, match="ONNX Runtime cannot load .*model.onnx"):
        open_tagger(load_bundle(bundle_copy), variant="fp32")


@pytest.mark.parametrize(
    ("variant", "device", "message"),
    [
        (
            "fp64",
            "cpu",
            "unknown variant 'fp64'; expected one of ['auto', 'fp32', 'int8', 'fp16', 'bf16']",
        ),
        ("auto", "tpu", "unknown device 'tpu'; expected one of ['cpu', 'cuda']"),
    ],
)
def test_unknown_variant_or_device(tiny_bundle, variant, device, message):
    with pytest.raises(BundleError, match=re.escape(message)):
        open_tagger(load_bundle(tiny_bundle), variant=variant, device=device)


def test_variant_not_in_bundle(bundle_copy):
    edit_meta(bundle_copy, lambda meta: meta["variants"].pop("int8"))
    with pytest.raises(
        BundleError, match=re.escape("has no int8 variant (it has ['fp16', 'fp32'])")
    ):
        open_tagger(load_bundle(bundle_copy), variant="int8")


def test_tokenizer_vocab_size_mismatch(bundle_copy):
    """A tokenizer with more entries than the model has embedding rows does not belong to it
    (fewer is fine: DeBERTa-v3's embedding has 99 spare rows)."""
    edit_meta(bundle_copy, lambda meta: meta["tokenizer"].update(vocab_size=100))
    bundle = load_bundle(bundle_copy)
    with pytest.raises(BundleError) as error:
        open_tagger(bundle, variant="fp32")
    actual = json.loads((bundle_copy / "tokenizer.json").read_text())["model"]["vocab"]
    assert f"tokenizer has {len(actual)} entries" in str(error.value)
    assert "vocabulary of 100" in str(error.value)
    edit_meta(bundle_copy, lambda meta: meta["tokenizer"].update(vocab_size=len(actual) + 99))
    open_tagger(load_bundle(bundle_copy), variant="fp32")


def test_cuda_without_provider(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BundleError, match="--device cuda needs onnxruntime-gpu"):
        open_tagger(load_bundle(tiny_bundle), variant="fp32", device="cuda")


def test_shorter_window_gets_a_proportional_stride(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    default = open_tagger(bundle, variant="fp32", threads=1)
    assert default.window == bundle.meta["max_length"] - 2
    assert default.stride == bundle.meta["stride"]
    short = open_tagger(bundle, variant="fp32", max_length=16, threads=1)
    assert (short.window, short.stride) == (14, 4)
    with pytest.raises(NerbatchError, match="stride 20 must be >= 0 and smaller than the window"):
        open_tagger(bundle, variant="fp32", max_length=16, stride=20)


def test_export_records_the_model_positions(tiny_bundle):
    # tests/conftest.py's tiny BERT has max_position_embeddings=256
    assert load_bundle(tiny_bundle).max_positions == 256


@pytest.mark.parametrize(
    ("model_type", "positions", "pad", "usable"),
    [("bert", 512, 0, 512), ("roberta", 514, 1, 512), ("xlm-roberta", 514, 1, 512)],
)
def test_usable_positions(model_type, positions, pad, usable):
    from ner_batch.checkpoint import usable_positions

    config = SimpleNamespace(
        model_type=model_type, max_position_embeddings=positions, pad_token_id=pad
    )
    assert usable_positions(config) == usable
    assert usable_positions(SimpleNamespace(model_type="t5")) is None


# Bundle defects through the real CLI with default options (the int8 variant on CPU): exit 1, one
# `Error:` line naming the bundle, the field and what was expected, and no output written.


@pytest.fixture
def annotate_cli(tmp_path):
    """annotate_cli(bundle, *options) -> (result, output directory)."""
    inputs = tmp_path / "inputs"
    write_txt(inputs / "docs.txt", DOCS)
    out = tmp_path / "out"

    def invoke(bundle: Path, *options: str):
        args = ["annotate", str(inputs), str(out), "--model", str(bundle), *options]
        return CliRunner().invoke(cli, args, catch_exceptions=False), out

    return invoke


def assert_refused(result, out: Path, *fragments: str, codes=(1,)) -> str:
    assert result.exit_code in codes, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: ") and not line.startswith("Error: unexpected"), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not out.exists(), "the check must come before any output is written"
    return line


def pop(field: str):
    def edit(meta):
        *parents, key = field.split(".")
        for parent in parents:
            meta = meta[parent]
        del meta[key]

    return edit


NESTED_FIELDS = [
    "tokenizer.file",
    "tokenizer.sha256",
    "tokenizer.word_shapes",
    "tokenizer.vocab_size",
    "variants.int8.file",
    "variants.int8.sha256",
    "variants.fp32.sha256",  # not the variant that runs: still a defect, found at once
]


@pytest.mark.parametrize("field", NESTED_FIELDS)
def test_missing_nested_field_is_named(bundle_copy, annotate_cli, field):
    edit_meta(bundle_copy, pop(field))
    result, out = annotate_cli(bundle_copy)
    assert_refused(result, out, str(bundle_copy / BUNDLE_FILE), f"lacks the field {field!r}")


def set_field(field: str, value):
    def edit(meta):
        *parents, key = field.split(".")
        for parent in parents:
            meta = meta[parent]
        meta[key] = value

    return edit


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("labels", "O B-PER I-PER", "field 'labels' is \"O B-PER I-PER\"; expected a non-empty"),
        ("labels", [], "field 'labels' is []; expected a non-empty list"),
        ("labels", ["O", 1, "B-PER"], "labels[1] is 1; expected a tag string"),
        ("labels", ["O", "X-PER", "I-PER"], "labels[1]: tag 'X-PER' has unknown prefix 'X'"),
        ("labels", ["O", "PER", "I-PER"], "labels[1]: tag 'PER' is not 'O' or PREFIX-TYPE"),
        ("labels", ["O", "B-PER", "B-PER"], "labels[2] 'B-PER' is listed twice"),
        ("max_length", 0, "field 'max_length' is 0; expected an integer >= 10"),
        ("max_length", "32", "field 'max_length' is \"32\"; expected an integer >= 10"),
        ("max_length", True, "field 'max_length' is true; expected an integer >= 10"),
        ("stride", -1, "field 'stride' is -1; expected an integer >= 0"),
        ("stride", 2.5, "field 'stride' is 2.5; expected an integer >= 0"),
        ("stride", 40, "stride 40 is not smaller than max_length 32"),
        ("bundle_id", "", "field 'bundle_id' is \"\"; expected a non-empty string"),
        ("tokenizer", "tokenizer.json", "field 'tokenizer' is \"tokenizer.json\"; expected an"),
        ("tokenizer.vocab_size", "163", "field 'tokenizer.vocab_size' is \"163\"; expected an"),
        ("tokenizer.word_shapes", "yes", "field 'tokenizer.word_shapes' is \"yes\"; expected"),
        ("tokenizer.sha256", "abc", "field 'tokenizer.sha256' is \"abc\"; expected a sha256"),
        ("tokenizer.file", "../tokenizer.json", "expected a file name in the bundle directory"),
        ("variants", {}, "field 'variants' is {}; expected an object with an entry per variant"),
        ("variants", ["fp32"], "field 'variants' is [\"fp32\"]; expected an object"),
        ("variants.int8", "model.int8.onnx", "field 'variants.int8' is \"model.int8.onnx\""),
        ("variants.int8.file", None, "field 'variants.int8.file' is null; expected a file name"),
        ("variants.int8.sha256", 5, "field 'variants.int8.sha256' is 5; expected a sha256"),
        ("max_positions", 0, "field 'max_positions' is 0; expected an integer >= 10 or null"),
        ("max_positions", 16, "max_length 32 is longer than max_positions 16"),
    ],
)
def test_malformed_field_is_named(bundle_copy, annotate_cli, field, value, message):
    edit_meta(bundle_copy, set_field(field, value))
    result, out = annotate_cli(bundle_copy)
    assert_refused(result, out, str(bundle_copy / BUNDLE_FILE), message)


def test_every_problem_in_one_message(bundle_copy):
    def edit(meta):
        meta.update(max_length=0, stride=-1)
        del meta["tokenizer"]["file"]

    edit_meta(bundle_copy, edit)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    message = str(error.value)
    assert "'max_length' is 0" in message and "'stride' is -1" in message
    assert "lacks the field 'tokenizer.file'" in message


def test_unknown_variant_names_are_ignored(bundle_copy, annotate_cli):
    edit_meta(bundle_copy, lambda meta: meta["variants"].update(bf16={"note": "not ours"}))
    with pytest.raises(BundleError, match=re.escape("'variants.bf16.file'")):
        load_bundle(bundle_copy)  # an entry still needs a file and a sha256 ...
    sha = "0" * 64
    edit_meta(bundle_copy, lambda meta: meta["variants"].update(bf16={"file": "x", "sha256": sha}))
    result, out = annotate_cli(bundle_copy)  # ... but is never used
    assert result.exit_code == 0, result.output


def test_fewer_labels_than_model_outputs(bundle_copy, annotate_cli):
    edit_meta(bundle_copy, lambda meta: meta.update(labels=meta["labels"][:-1]))
    result, out = annotate_cli(bundle_copy)
    n = len(load_bundle(bundle_copy).labels)
    assert_refused(
        result,
        out,
        str(bundle_copy),
        f"the model has {n + 1} output labels but {BUNDLE_FILE} lists {n}",
        "model.int8.onnx",
    )


def test_more_labels_than_model_outputs(bundle_copy):
    edit_meta(bundle_copy, lambda meta: meta["labels"].append("B-MISC"))
    with pytest.raises(BundleError, match="the model has 7 output labels but bundle.json lists 8"):
        open_tagger(load_bundle(bundle_copy), variant="fp32", threads=1)


def test_stride_that_fits_max_length_but_not_the_window(bundle_copy, annotate_cli):
    """max_length 32 leaves 30 sub-tokens besides [CLS] and [SEP]: stride 31 is too long."""
    edit_meta(bundle_copy, lambda meta: meta.update(stride=31))
    result, out = annotate_cli(bundle_copy)
    assert_refused(
        result, out, str(bundle_copy), f"the window in {BUNDLE_FILE} does not fit", "stride 31"
    )


def test_default_window_still_works(bundle_copy, annotate_cli):
    result, out = annotate_cli(bundle_copy)
    assert result.exit_code == 0, result.output
    assert (out / "_SUCCESS").exists()


@pytest.mark.parametrize("recorded", [True, False], ids=["max_positions", "probe"])
def test_max_length_longer_than_the_model_positions(bundle_copy, annotate_cli, recorded):
    if not recorded:  # a bundle exported before max_positions was: the probe run finds out
        edit_meta(bundle_copy, pop("max_positions"))
    result, out = annotate_cli(bundle_copy, "--max-length", "1024")
    assert_refused(
        result,
        out,
        "--max-length 1024 is longer than this model's 256 positions",
        "use at most 256",
        codes=(1, 2),
    )
    for length in ("256", "100"):  # up to the limit is fine, on either path
        result, out = annotate_cli(bundle_copy, "--max-length", length)
        assert result.exit_code == 0, result.output
        shutil.rmtree(out)


def test_wrong_recorded_positions_are_caught_by_the_probe(bundle_copy, annotate_cli):
    edit_meta(bundle_copy, lambda meta: meta.update(max_positions=4096))
    result, out = annotate_cli(bundle_copy, "--max-length", "1024")
    assert_refused(result, out, "longer than this model's 256 positions", codes=(1, 2))


def test_bundle_max_length_longer_than_the_model_positions(bundle_copy):
    """An old bundle (no max_positions) whose own window is too long: a bundle error."""

    def edit(meta):
        del meta["max_positions"]
        meta.update(max_length=300, stride=50)

    edit_meta(bundle_copy, edit)
    with pytest.raises(BundleError) as error:
        open_tagger(load_bundle(bundle_copy), variant="int8", threads=1)
    assert "max_length 300 in bundle.json is longer than the model's 256 positions" in str(
        error.value
    )


def fake_model(inputs, output_shape, n_labels=7) -> Model:
    """A backends.Model with these inputs and output shape, whose logits have `n_labels`."""

    def logits(ids, mask, types):
        return np.zeros((*ids.shape, n_labels), dtype=np.float32)

    return Model("onnxruntime", Path("model.onnx"), dict(inputs), output_shape, 1, logits)


INT64 = "tensor(int64)"
BERT_INPUTS = {"input_ids": INT64, "attention_mask": INT64, "token_type_ids": INT64}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": INT64}, "model.onnx has no input 'attention_mask'"),
        ({**BERT_INPUTS, "position_ids": INT64}, "needs an input 'position_ids' that nerbatch"),
        ({**BERT_INPUTS, "input_ids": "tensor(int32)"}, "takes 'input_ids' as tensor(int32)"),
    ],
)
def test_session_inputs_are_checked(tiny_bundle, inputs, message):
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(BundleError, match=re.escape(message)):
        check_graph(bundle, fake_model(inputs, ["batch", "sequence", 7]))
    check_graph(bundle, fake_model(BERT_INPUTS, ["batch", "sequence", 7]))
    no_types = {"input_ids": INT64, "attention_mask": INT64}
    check_graph(bundle, fake_model(no_types, ["batch", "sequence", 7]))


def test_symbolic_label_dimension_is_checked_by_the_probe(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    model = fake_model(BERT_INPUTS, ["batch", "sequence", "labels"], n_labels=5)
    check_graph(bundle, model)  # cannot tell from the graph
    with pytest.raises(BundleError, match="the model has 5 output labels but bundle.json lists 7"):
        check_runs(bundle, model, bundle.encoder(), 32, chosen=False)
