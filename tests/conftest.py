"""Shared fixtures: a tiny random BERT with its own WordPiece tokenizer, tiny CoNLL files, and
(once per session) a checkpoint trained for a few steps on them and its exported bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_CONLL = Path(
    os.environ.get(
        "NERBATCH_CONLL_DIR", Path(__file__).parents[1] / ".." / "shared" / "data" / "conll2003"
    )
).resolve()

WORDS = [
    "the",
    "a",
    "of",
    "in",
    "on",
    "at",
    "to",
    "and",
    "said",
    "says",
    "met",
    "visited",
    "from",
    "with",
    "for",
    "by",
    "is",
    "was",
    "will",
    "new",
    "john",
    "mary",
    "smith",
    "paris",
    "london",
    "berlin",
    "york",
    "acme",
    "corp",
    "inc",
    "bank",
    "united",
    "nations",
    "germany",
    "france",
    "european",
    "commission",
    "peter",
    "blackburn",
    "eu",
    "german",
    "british",
    "call",
    "boycott",
    "lamb",
    "thursday",
    "monday",
    "president",
    "minister",
    "company",
    "city",
    "river",
    "reuters",
    "apple",
    "google",
    "é",
    "ü",
    "中",
    "文",
    "##s",
    "##ed",
    "##ing",
    "##er",
    "##ly",
    "##an",
    "##on",
]

TRAIN_CONLL = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Smith NNP I-NP I-PER
visited VBD B-VP O
Paris NNP B-NP B-LOC
. . O O

The DT B-NP O
European NNP I-NP B-ORG
Commission NNP I-NP I-ORG
met VBD B-VP O
Mary NNP B-NP B-PER
in IN B-PP O
London NNP B-NP B-LOC
. . O O

-DOCSTART- -X- -X- O

Acme NNP B-NP B-ORG
Corp NNP I-NP I-ORG
said VBD B-VP O
Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
was VBD B-VP O
in IN B-PP O
Berlin NNP B-NP B-LOC
on IN B-PP O
Thursday NNP B-NP O
. . O O
"""


def build_tokenizer(path: Path) -> None:
    """A small uncased WordPiece tokenizer in the layout of bert-base-uncased."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()")
    vocab = {
        t: i
        for i, t in enumerate(dict.fromkeys(special + WORDS + chars + ["##" + c for c in chars]))
    }
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 512,
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
                "do_lower_case": True,
            }
        )
    )
    return tokenizer.get_vocab_size()


def build_tiny_bert(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model dir, bundle dir) of a tiny random model of `tests/arch_models.py` per (family,
    scheme), built and exported (fp32, int8) once per module: exported(family, scheme)."""
    import arch_models
    from helpers import LOOSE

    from ner_batch.export import export

    made: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(family: str, scheme: str) -> tuple[Path, Path]:
        if (family, scheme) not in made:
            root = tmp_path_factory.mktemp(f"{family}-{scheme}")
            model = arch_models.build(family, root / "model", scheme=scheme)
            bundle = root / "bundle"
            export(model, bundle, variants=("fp32", "int8"), tolerances=LOOSE)
            made[family, scheme] = (model, bundle)
        return made[family, scheme]

    return get


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test its own nerbatch cache ($NERBATCH_CACHE: remembered runtime choices, OpenVINO's
    compiled models, downloaded bundles), never the user's ~/.cache/nerbatch: a choice one test
    remembered would spare the next its probe. Subprocesses inherit it."""
    monkeypatch.setenv("NERBATCH_CACHE", str(tmp_path_factory.mktemp("nerbatch-cache")))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_conll(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("conll") / "train.txt"
    path.write_text(TRAIN_CONLL)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_base, tiny_conll) -> Path:
    from ner_batch.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run") / "ckpt"
    train(
        TrainConfig(
            train=str(tiny_conll),
            dev=str(tiny_conll),
            out=str(out),
            base_model=str(tiny_base),
            epochs=2,
            batch_size=2,
            lr=5e-3,
            max_length=32,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint, tiny_conll) -> Path:
    from ner_batch.export import Tolerances, export

    out = tmp_path_factory.mktemp("export") / "tiny"
    # A random tiny model has near-tied logits: F1 deltas of int8/fp16 are noise, not a signal.
    export(
        tiny_checkpoint,
        out,
        dev=tiny_conll,
        variants=("fp32", "int8", "fp16"),  # the openvino variant: test_openvino.py
        tolerances=Tolerances(int8_max_f1_drop=1.0, fp16_max_f1_drop=1.0),
    )
    return out


@pytest.fixture(scope="session")
def ov_bundle(tmp_path_factory, tiny_checkpoint, tiny_conll) -> Path:
    """The tiny checkpoint exported by the CLI with its default variants, which include openvino
    when the [openvino] extra is installed (skips otherwise)."""
    for module in ("openvino", "nncf"):
        pytest.importorskip(module, reason="the [openvino] extra is not installed")
    out = tmp_path_factory.mktemp("ov") / "tiny-ov"
    # The CLI, default variants: with the extra installed they include openvino.
    result = subprocess.run(
        [sys.executable, "-m", "ner_batch.cli", "export", str(tiny_checkpoint), "--out", str(out)]
        + ["--dev", str(tiny_conll), "--keep-failed"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "openvino: model.openvino.xml" in result.stdout
    return out


@pytest.fixture(scope="session")
def conll_dir() -> Path:
    """The CoNLL-2003 directory (train/dev/test.txt); skips the test when it is absent."""
    if not all((SHARED_CONLL / f"{split}.txt").is_file() for split in ("train", "dev", "test")):
        pytest.skip(f"CoNLL-2003 not found at {SHARED_CONLL} (set NERBATCH_CONLL_DIR)")
    return SHARED_CONLL


@pytest.fixture
def run(tiny_bundle):
    """annotate() on the tiny bundle's fp32 variant, one thread: run(inputs, output, **options)."""
    from ner_batch.annotate import AnnotateConfig, annotate

    def run(inputs, output, **options) -> dict:
        options.setdefault("model", str(tiny_bundle))
        options.setdefault("variant", "fp32")
        options.setdefault("threads", 1)
        return annotate(
            AnnotateConfig(inputs=[str(i) for i in inputs], output=str(output), **options)
        )

    return run
