"""Bring your own model: Hugging Face token classifiers that nerbatch did not train (tiny random
models of six families, each with a tokenizer of its own kind, built in tests/arch_models.py and
saved with `save_pretrained` as a Hub checkpoint is), exported with `nerbatch export`, annotated
with `nerbatch annotate` and `ner_batch.load`, and compared span by span with the transformers
pipeline (aggregation "first") or, for schemes the pipeline mis-decodes, with a scheme-aware
decoding of the same PyTorch logits. Tokenizers without a continuing-subword prefix (RoBERTa,
XLM-R, DeBERTa) are compared with whole words instead, where nerbatch parts from the pipeline
(see test_whole_words.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from arch_models import (
    CONLL_LIKE_SENTENCES,
    RAW_SENTENCES,
    build,
    pipeline_spans,
    scheme_oracle_spans,
)
from click.testing import CliRunner
from helpers import LOOSE
from test_whole_words import whole_word_spans

import ner_batch
from ner_batch.cli import cli
from ner_batch.export import export

pytest.importorskip("transformers")

# Random weights: F1 comparisons between variants say nothing, logits and argmax still must agree.
# One line each: annotate's default `--segment lines` tags every line on its own, the pipeline
# a whole text at once, so only single lines compare (both see the same context).
TEXTS = [t for t in CONLL_LIKE_SENTENCES + RAW_SENTENCES if "\n" not in t]

CASES = [
    ("bert-uncased", "iob2"),
    ("bert-cased", "bioes"),
    ("distilbert", "iob2"),
    ("roberta", "iob2"),
    ("roberta", "io"),
    ("xlm-roberta", "iob2"),
    ("xlm-roberta", "bilou"),
    ("deberta-v2", "iob2"),
    ("electra", "iob1"),
]
# No continuing-subword prefix: words are whole whitespace words, not the pipeline's.
WHOLE_WORDS = {"roberta", "xlm-roberta", "deberta-v2"}


def keyed(spans: list[list[dict]], texts: list[str]) -> list[set[tuple]]:
    """(start, end, label) of each document's spans, without the spaces around them: the
    pipeline's offsets keep the space that byte-level BPE and SentencePiece pieces carry
    ("ĠParis", "▁Paris"), nerbatch's spans never include it. Spans with no visible text are
    left out: the pipeline reports a lone space piece or a run of spaces as an entity when the
    model labels it; nerbatch never writes such a span."""
    keys = []
    for doc, text in zip(spans, texts, strict=True):
        found = set()
        for s in doc:
            start, end = s["start"], s["end"]
            surface = text[start:end]
            if surface.strip():
                start += len(surface) - len(surface.lstrip())
                end -= len(surface) - len(surface.rstrip())
                found.add((start, end, s["label"]))
        keys.append(found)
    return keys


def agreement(ours: list[list[dict]], reference: list[list[dict]]) -> float:
    pairs = list(zip(keyed(ours, TEXTS), keyed(reference, TEXTS), strict=True))
    total = sum(len(a | b) for a, b in pairs)
    return sum(len(a & b) for a, b in pairs) / total if total else 1.0


@pytest.mark.parametrize(("family", "scheme"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_spans_equal_the_pipeline_or_the_scheme(exported, family, scheme):
    model, bundle = exported(family, scheme)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["tokenizer"]["word_rule"] == "pipeline"
    assert meta["tokenizer"]["word_shapes"] is False
    ours = ner_batch.load(str(bundle), variant="fp32", decode="argmax")(TEXTS)
    for text, spans in zip(TEXTS, ours, strict=True):
        for span in spans:
            assert text[span["start"] : span["end"]] == span["text"]
            assert span["text"] and not span["text"][0].isspace() and not span["text"][-1].isspace()
    assert sum(map(len, ours)) > len(TEXTS) / 2, "the random model finds entities"
    # The pipeline decodes B-/I- only; for BIOES/BILOU/IO the reference decodes the same
    # PyTorch logits by the scheme (and the pipeline must agree with it where the scheme is IOB).
    if family in WHOLE_WORDS:
        reference = whole_word_spans(model, TEXTS)
    elif scheme in ("iob1", "iob2"):
        reference = pipeline_spans(model, TEXTS)
    else:
        reference = scheme_oracle_spans(model, TEXTS)
    assert agreement(ours, reference) >= 0.995, (family, scheme, agreement(ours, reference))


def test_annotate_and_the_python_api_write_the_same_spans(exported, tmp_path):
    """int8 too: the API batches the texts as annotate does, so even the scores are equal."""
    _, bundle = exported("roberta", "iob2")
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        ["annotate", str(corpus), str(out), "--model", str(bundle)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    spans = ner_batch.load(str(bundle))(TEXTS)
    expected = [
        (str(i), s["start"], s["end"], s["label"], s["text"], s["score"])
        for i, doc in enumerate(spans)
        for s in doc
    ]
    assert [
        (r["doc_id"], r["start"], r["end"], r["label"], r["text"], r["score"]) for r in rows
    ] == expected


def test_label_n_names_warn(tmp_path, caplog):
    model = build("distilbert", tmp_path / "model", scheme="label_n")
    with caplog.at_level("WARNING"):
        export(model, tmp_path / "bundle", variants=("fp32",), tolerances=LOOSE)
    assert "has no label names" in caplog.text


def test_a_directory_that_is_not_a_token_classifier_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    result = CliRunner().invoke(
        cli, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot load a token classifier from the directory")


def test_score_maps_model_types_to_gold_types(exported, tmp_path):
    """A model whose types are not the gold ones: --label-map maps them, the rest are reported."""
    _, bundle = exported("bert-uncased", "iob2")
    gold = tmp_path / "gold.txt"
    gold.write_text("John B-PERSON\nvisited O\nParis B-GPE\n.\tO\n\n".replace("\t", " "))
    result = CliRunner().invoke(
        cli,
        ["score", str(gold), "--model", str(bundle), "--label-map", "PER=PERSON,LOC=GPE"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(
        cli, ["score", str(gold), "--model", str(bundle), "--label-map", "PER"]
    )
    assert bad.exit_code == 2 and "not MODEL_TYPE=GOLD_TYPE" in bad.output


def test_a_minilm_fine_tuned_with_the_plain_trainer(tiny_conll, tmp_path, monkeypatch):
    # What a Hugging Face tutorial does (benchmarks/plain_trainer.py), for a few steps.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from plain_trainer import fine_tune_with_the_plain_trainer

    model = fine_tune_with_the_plain_trainer(
        tiny_conll, tmp_path / "minilm", max_steps=12, batch_size=4, lr=5e-4
    )
    assert not (model / "nerbatch.json").exists()
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli, ["export", str(model), "--out", str(bundle), "--variants", "fp32,int8"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["graph"]["fused_ops"], "BERT fusions apply to MiniLM"
    ours = ner_batch.load(str(bundle), variant="fp32", decode="argmax")(TEXTS)
    assert agreement(ours, pipeline_spans(model, TEXTS)) >= 0.995
    int8 = ner_batch.load(str(bundle), variant="int8", decode="argmax")(TEXTS)
    assert agreement(int8, ours) >= 0.9  # int8 of a barely trained model: close, not equal


def test_the_plain_trainers_bioes_tags(monkeypatch):
    # The BIOES model that the Viterbi measurement uses is trained on these tags.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from plain_trainer import label_order, to_bioes

    tags = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-MISC"]
    assert to_bioes(tags) == ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "S-MISC"]
    assert to_bioes([]) == [] and to_bioes(["O"]) == ["O"]
    assert sorted(["S-PER", "B-LOC", "O", "E-LOC"], key=label_order) == [
        "O",
        "B-LOC",
        "E-LOC",
        "S-PER",
    ]
