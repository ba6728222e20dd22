"""Model bundle integrity: load_bundle and Bundle.tagger refuse a bundle that is missing, of an
unknown format, corrupt or inconsistent, with a message that says which file and why."""

from __future__ import annotations

import json
import re

import pytest
from helpers import copy_bundle

from ner_batch.bundle import BUNDLE_FILE, FORMAT_VERSION, load_bundle, sha256_of
from ner_batch.errors import BundleError, NerbatchError


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
        bundle.tagger(variant="fp32")
    message = str(error.value)
    assert f"{file} does not match its checksum in {BUNDLE_FILE}" in message
    assert "export the bundle again" in message


def test_corrupted_variant_only_fails_when_used(bundle_copy):
    (bundle_copy / "model.int8.onnx").write_bytes(b"garbage")
    bundle = load_bundle(bundle_copy)
    bundle.tagger(variant="fp32", threads=1)  # fine: int8 is not used
    with pytest.raises(BundleError, match=re.escape("model.int8.onnx does not match")):
        bundle.tagger(variant="auto", device="cpu")


def test_missing_model_file(bundle_copy):
    (bundle_copy / "model.fp16.onnx").unlink()
    with pytest.raises(BundleError, match="is missing model.fp16.onnx"):
        load_bundle(bundle_copy).tagger(variant="fp16")


def test_unreadable_onnx_with_matching_checksum(bundle_copy):
    """A file that matches bundle.json but is not ONNX: ORT's own error, named."""
    (bundle_copy / "model.onnx").write_bytes(b"not onnx")
    edit_meta(
        bundle_copy,
        lambda meta: meta["variants"]["fp32"].update(sha256=sha256_of(bundle_copy / "model.onnx")),
    )
    with pytest.raises(BundleError, match="ONNX Runtime cannot load .*model.onnx"):
        load_bundle(bundle_copy).tagger(variant="fp32")


@pytest.mark.parametrize(
    ("variant", "device", "message"),
    [
        ("fp64", "cpu", "unknown variant 'fp64'; expected one of ['auto', 'fp32', 'int8', 'fp16']"),
        ("auto", "tpu", "unknown device 'tpu'; expected one of ['cpu', 'cuda']"),
    ],
)
def test_unknown_variant_or_device(tiny_bundle, variant, device, message):
    with pytest.raises(BundleError, match=re.escape(message)):
        load_bundle(tiny_bundle).tagger(variant=variant, device=device)


def test_variant_not_in_bundle(bundle_copy):
    edit_meta(bundle_copy, lambda meta: meta["variants"].pop("int8"))
    with pytest.raises(
        BundleError, match=re.escape("has no int8 variant (it has ['fp16', 'fp32'])")
    ):
        load_bundle(bundle_copy).tagger(variant="int8")


def test_tokenizer_vocab_size_mismatch(bundle_copy):
    edit_meta(bundle_copy, lambda meta: meta["tokenizer"].update(vocab_size=30522))
    bundle = load_bundle(bundle_copy)
    with pytest.raises(BundleError) as error:
        bundle.tagger(variant="fp32")
    actual = json.loads((bundle_copy / "tokenizer.json").read_text())["model"]["vocab"]
    assert f"tokenizer has {len(actual)} entries" in str(error.value)
    assert "vocabulary of 30522" in str(error.value)


def test_cuda_without_provider(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BundleError, match="--device cuda needs onnxruntime-gpu"):
        load_bundle(tiny_bundle).tagger(variant="fp32", device="cuda")


def test_shorter_window_gets_a_proportional_stride(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    default = bundle.tagger(variant="fp32", threads=1)
    assert default.window == bundle.meta["max_length"] - 2
    assert default.stride == bundle.meta["stride"]
    short = bundle.tagger(variant="fp32", max_length=16, threads=1)
    assert (short.window, short.stride) == (14, 4)
    with pytest.raises(NerbatchError, match="stride 20 must be >= 0 and smaller than the window"):
        bundle.tagger(variant="fp32", max_length=16, stride=20)
