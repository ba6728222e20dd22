"""Checks of tests/arch_models.py: every family builds a Hub-like checkpoint that reloads with the
Auto classes, the pipeline finds entities with it, and the scheme oracle reproduces the pipeline
exactly for IOB2 (and differs from it for BIOES/BILOU, where the pipeline mis-decodes)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_models as am  # noqa: E402  (tests/ is on sys.path: pytest rootdir-relative import)

SCHEMES_TESTED = ("iob2", "bioes")
MODEL_CLASS = {
    "bert-uncased": "BertForTokenClassification",
    "bert-cased": "BertForTokenClassification",
    "distilbert": "DistilBertForTokenClassification",
    "roberta": "RobertaForTokenClassification",
    "xlm-roberta": "XLMRobertaForTokenClassification",
    "deberta-v2": "DebertaV2ForTokenClassification",
    "electra": "ElectraForTokenClassification",
}
TOKENIZER_CLASS = {
    "bert-uncased": "BertTokenizer",
    "bert-cased": "BertTokenizer",
    "distilbert": "DistilBertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
    "electra": "BertTokenizer",  # ElectraTokenizerFast is BertTokenizer in transformers 5
}
N_CONLL = len(am.CONLL_LIKE_SENTENCES)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The cores are shared: intra-op threads spin against other processes (4x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build(family, scheme) -> directory, each built once per module."""
    cache = {}

    def get(family: str, scheme: str):
        if (family, scheme) not in cache:
            out = tmp_path_factory.mktemp(f"{family}-{scheme}")
            cache[family, scheme] = am.build(family, out / "model", scheme)
        return cache[family, scheme]

    return get


@pytest.fixture(scope="module")
def spans(built):
    """(pipeline spans, oracle spans) over ALL_SENTENCES, each computed once per module."""
    cache = {}

    def get(family: str, scheme: str):
        if (family, scheme) not in cache:
            directory = built(family, scheme)
            cache[family, scheme] = (
                am.pipeline_spans(directory, am.ALL_SENTENCES),
                am.scheme_oracle_spans(directory, am.ALL_SENTENCES),
            )
        return cache[family, scheme]

    return get


def test_sentences():
    assert 90 <= N_CONLL <= 110 and 15 <= len(am.RAW_SENTENCES) <= 25
    for text in am.CONLL_LIKE_SENTENCES:
        assert text == " ".join(text.split()), text  # tokens joined by single spaces
    raw = "".join(am.RAW_SENTENCES)
    for needle in ("Paris, France.", "U.S.-based", "O'Neil's", "🙂", "São Paulo", "  ", "\t"):
        assert needle in raw
    assert len(am.CORPUS) >= 300


@pytest.mark.parametrize("scheme", SCHEMES_TESTED)
@pytest.mark.parametrize("family", list(am.FAMILIES))
def test_checkpoint_reloads(built, family, scheme):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    directory = built(family, scheme)
    files = {p.name for p in directory.iterdir()}
    # transformers 5 writes no special_tokens_map.json: the specials live in tokenizer_config.json
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    model = AutoModelForTokenClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(model).__name__ == MODEL_CLASS[family]
    assert type(tokenizer).__name__ == TOKENIZER_CLASS[family]
    assert tokenizer.is_fast
    labels = am.SCHEMES[scheme]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert model.config.label2id == {label: i for i, label in enumerate(labels)}
    assert model.config.num_hidden_layers == 2 and model.num_parameters() < 300_000
    assert 500 <= len(tokenizer) <= 2000 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.model_max_length == am.MAX_LEN
    # what the bundle ships (raw tokenizer.json) encodes as transformers' rebuilt tokenizer does
    assert am.reload_mismatches(directory, am.ALL_SENTENCES) == []

    config = json.loads((directory / "config.json").read_text())
    enc = tokenizer("John Smith visited Zürich.")
    if family == "distilbert":
        assert "token_type_ids" not in enc
    if family in ("roberta", "xlm-roberta"):
        assert tokenizer.pad_token_id == config["pad_token_id"] == 1
        assert config["max_position_embeddings"] == am.MAX_LEN + 2
        assert tokenizer.convert_ids_to_tokens(enc["input_ids"])[0] == "<s>"
    if family == "deberta-v2":
        assert config["relative_attention"] and config["pos_att_type"] == ["p2c", "c2p"]
        assert not config["position_biased_input"] and config["type_vocab_size"] == 0
    if family == "bert-cased":
        assert tokenizer.tokenize("Zürich") == ["Zürich"]
    if family == "bert-uncased":
        assert tokenizer.tokenize("Zürich") == ["zurich"]


@pytest.mark.parametrize("scheme", SCHEMES_TESTED)
@pytest.mark.parametrize("family", list(am.FAMILIES))
def test_pipeline_finds_entities(spans, family, scheme):
    pipe, _ = spans(family, scheme)
    assert len(pipe) == len(am.ALL_SENTENCES)
    assert sum(bool(s) for s in pipe) >= 0.9 * len(pipe)
    labels = {s["label"] for text_spans in pipe for s in text_spans}
    assert labels <= set(am.TYPES) and len(labels) >= 3
    for text, text_spans in zip(am.ALL_SENTENCES, pipe, strict=True):
        for s in text_spans:
            assert 0 <= s["start"] <= s["end"] <= len(text) and 0 < s["score"] <= 1


@pytest.mark.parametrize("family", list(am.FAMILIES))
def test_oracle_equals_pipeline_for_iob2(spans, family):
    pipe, oracle = spans(family, "iob2")
    assert am.same_spans(pipe[:N_CONLL], oracle[:N_CONLL]) == []
    assert am.same_spans(pipe[N_CONLL:], oracle[N_CONLL:]) == []  # raw text too


@pytest.mark.parametrize("aggregation", ["max", "average"])
@pytest.mark.parametrize("family", ["bert-cased", "xlm-roberta"])
def test_oracle_equals_pipeline_other_aggregations(built, family, aggregation):
    directory, texts = built(family, "iob2"), am.ALL_SENTENCES[::3]
    pipe = am.pipeline_spans(directory, texts, aggregation)
    assert am.same_spans(pipe, am.scheme_oracle_spans(directory, texts, aggregation)) == []


@pytest.mark.parametrize("family", list(am.FAMILIES))
def test_pipeline_misdecodes_bioes(spans, family):
    pipe, oracle = spans(family, "bioes")
    assert am.same_spans(pipe, oracle)  # the pipeline splits B- E- and merges S- S-
    assert {s["label"] for text_spans in oracle for s in text_spans} <= set(am.TYPES)


@pytest.mark.parametrize("scheme", ["iob1", "io", "label_n", "bilou"])
def test_other_schemes(built, scheme):
    directory = built("bert-cased", scheme)
    pipe = am.pipeline_spans(directory, am.CONLL_LIKE_SENTENCES[:30])
    oracle = am.scheme_oracle_spans(directory, am.CONLL_LIKE_SENTENCES[:30])
    assert sum(bool(s) for s in pipe) >= 25
    if scheme == "bilou":
        assert am.same_spans(pipe, oracle)
    else:
        assert am.same_spans(pipe, oracle) == []
    if scheme == "label_n":  # no "O": every word is in some LABEL_k entity
        assert {s["label"] for text_spans in pipe for s in text_spans} <= set(am.SCHEMES[scheme])


def test_argmax_margins(built):
    for family in ("bert-uncased", "roberta", "deberta-v2"):
        # build() guarantees MIN_MARGIN on ALL_SENTENCES (batched); one by one they differ ~1e-6
        assert am.min_margin(built(family, "iob2"), am.ALL_SENTENCES) > am.MIN_MARGIN / 2


def test_build_is_deterministic(tmp_path):
    """Same seed, same checkpoint: also across processes (tokenizers' trainers are not)."""
    import subprocess
    import sys
    from pathlib import Path

    a = am.build("deberta-v2", tmp_path / "a", seed=3)
    b = am.build("deberta-v2", tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    code = (
        "import hashlib, arch_models as am; print(*(hashlib.sha256(t.to_str().encode())"
        ".hexdigest() for t in (am._wordpiece(True), am._wordpiece(False), am._byte_level_bpe(),"
        " am._xlmr_unigram(), am._deberta_unigram())))"
    )
    here = str(Path(__file__).parent)
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=here, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1
    assert (
        runs.pop().split()[-1]
        == __import__("hashlib").sha256(am._deberta_unigram().to_str().encode()).hexdigest()
    )


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"],
         [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 3, 4)]),
        (["B-PER", "E-PER", "S-LOC", "S-LOC"], [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 3, 3)]),
        (["B-ORG", "I-ORG", "L-ORG", "U-ORG", "I-ORG"],
         [("ORG", 0, 2), ("ORG", 3, 3), ("ORG", 4, 4)]),
        (["E-PER", "B-PER", "O", "I-MISC", "E-MISC"],
         [("PER", 0, 0), ("PER", 1, 1), ("MISC", 3, 4)]),
        (["PER", "PER", "O", "LOC", "PER"], [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 4)]),
        (["LABEL_0", "LABEL_0", "LABEL_2"], [("LABEL_0", 0, 1), ("LABEL_2", 2, 2)]),
        ([], []),
    ],
)  # fmt: skip
def test_decode(labels, expected):
    assert am.decode(labels) == expected


def test_pipeline_grouping_quirks(built):
    """The pipeline's own grouping of word labels (group_entities), on hand-made words."""
    import numpy as np
    from transformers import pipeline

    directory = built("bert-cased", "bioes")
    tagger = pipeline("token-classification", model=str(directory), aggregation_strategy="first")
    words = ["John", "Smith", "Paris"]

    def group(labels):
        entities = [
            {"entity": label, "score": np.float32(0.9), "word": w, "start": 6 * i, "end": 6 * i + 5}
            for i, (label, w) in enumerate(zip(labels, words, strict=False))
        ]
        return [(e["entity_group"], e["word"]) for e in tagger.group_entities(entities)]

    assert group(["B-PER", "E-PER"]) == [("PER", "John"), ("PER", "Smith")]  # split
    assert group(["S-PER", "S-PER"]) == [("PER", "John Smith")]  # merged
    assert group(["B-PER", "I-PER", "E-PER"]) == [("PER", "John Smith"), ("PER", "Paris")]
    assert group(["B-PER", "I-PER"]) == [("PER", "John Smith")]  # IOB2 is right
    assert group(["LABEL_1", "LABEL_1"]) == [("LABEL_1", "John Smith")]


def test_word_grouping_quirks(built):
    """How the pipeline (and so the oracle) cuts raw and CoNLL text into words."""
    lamb = "EU rejects German call to boycott British lamb ."
    words = {f: am.word_spans(built(f, "iob2"), lamb) for f in ("roberta", "xlm-roberta")}
    assert words["roberta"][-2:] == [(47, 47), (47, 48)]  # a lone "Ġ": an empty word
    assert words["xlm-roberta"][-2:] == [(47, 48), (47, 48)]  # a lone "▁": "." twice
    emoji = "Anna in São Paulo 🙂 yesterday!"
    at = emoji.index("🙂")
    assert am.word_spans(built("roberta", "iob2"), emoji).count((at, at + 1)) >= 2
    deberta = am.word_spans(built("deberta-v2", "iob2"), "Paris, France.")
    assert deberta == [(0, 6), (6, 14)]  # " France." starts on the space
    for family in am.FAMILIES:
        tokenizer = built(family, "iob2")
        tabbed = am.word_spans(tokenizer, "Tokyo\tBerlin\tCairo")
        paris = am.word_spans(tokenizer, "Paris, France.")
        if family in ("roberta", "xlm-roberta", "deberta-v2"):  # the fallback heuristic
            assert tabbed == [(0, 18)]
            assert paris in ([(0, 6), (7, 14)], [(0, 6), (6, 14)])
        else:  # WordPiece: "##" tells subwords
            assert tabbed == [(0, 5), (6, 12), (13, 18)]
            assert paris == [(0, 5), (5, 6), (7, 13), (13, 14)]
