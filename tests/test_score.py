"""seqeval scoring on a hand-computed case (default and strict IOB2 mode), the report renderers,
and the gold -> corpus records whose offsets let `score --predictions` map spans back."""

from __future__ import annotations

import json

import pytest
from pytest import approx

from ner_batch.conll import Document, Sentence, read_conll, sentences_of
from ner_batch.corpus import gold_layout, gold_records, gold_to_corpus, sentence_id

pytest.importorskip("seqeval")

from ner_batch.score import format_table, markdown_report, seqeval_report  # noqa: E402

# Three sentences, every kind of mistake once:
#   1. John Smith visited Paris .   gold PER(0-2) LOC(3)   pred PER(0) LOC(3)
#      -> PER partial match: one wrong prediction AND one missed gold entity; LOC correct.
#   2. Acme Corp in Berlin          gold ORG(0-2) LOC(3)   pred ORG(0-2) PER(3)
#      -> ORG correct; Berlin has the wrong type: a missed LOC and a wrong PER.
#   3. Mary met Peter               gold PER(0) PER(2)     pred I-PER(0) PER(2)
#      -> "I-PER" without B-: an entity in default (conlleval) mode, which matches Mary;
#         in strict IOB2 mode it is no entity at all, so Mary is missed. Peter correct.
GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["B-ORG", "I-ORG", "O", "B-LOC"],
    ["B-PER", "O", "B-PER"],
]
PRED = [
    ["B-PER", "O", "O", "B-LOC", "O"],
    ["B-ORG", "I-ORG", "O", "B-PER"],
    ["I-PER", "O", "B-PER"],
]

# Default mode. Gold: PER 3, LOC 2, ORG 1 (6). Predicted: PER 4 (John, Berlin, Mary, Peter),
# LOC 1, ORG 1 (6). Correct: PER 2 (Mary, Peter), LOC 1 (Paris), ORG 1 (4).
#   PER: P = 2/4, R = 2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
#   LOC: P = 1/1, R = 1/2, F1 = 1/(3/2) = 2/3
#   ORG: P = R = F1 = 1
#   micro: P = 4/6, R = 4/6, F1 = 2/3
#   macro: P = (1/2 + 1 + 1)/3 = 5/6, R = (2/3 + 1/2 + 1)/3 = 13/18, F1 = (4/7 + 2/3 + 1)/3 = 47/63
#   weighted by support 3:2:1: P = (3/2 + 2 + 1)/6 = 3/4, R = (2 + 1 + 1)/6 = 2/3,
#                              F1 = (12/7 + 4/3 + 1)/6 = 85/126
DEFAULT = {
    "PER": (2 / 4, 2 / 3, 4 / 7, 3),
    "LOC": (1, 1 / 2, 2 / 3, 2),
    "ORG": (1, 1, 1, 1),
    "micro": (2 / 3, 2 / 3, 2 / 3, 6),
    "macro": (5 / 6, 13 / 18, 47 / 63, 6),
    "weighted": (3 / 4, 2 / 3, 85 / 126, 6),
}
# Strict IOB2 mode: the "I-PER" of sentence 3 is dropped. Predicted PER 3 (John, Berlin, Peter),
# correct PER 1 (Peter). LOC and ORG as above. Predicted 5, correct 3, gold 6.
#   PER: P = R = F1 = 1/3
#   micro: P = 3/5, R = 3/6, F1 = 2(3/5)(1/2)/(11/10) = 6/11
#   macro: P = (1/3 + 1 + 1)/3 = 7/9, R = (1/3 + 1/2 + 1)/3 = 11/18, F1 = (1/3 + 2/3 + 1)/3 = 2/3
#   weighted: P = (1 + 2 + 1)/6 = 2/3, R = (1 + 1 + 1)/6 = 1/2, F1 = (1 + 4/3 + 1)/6 = 5/9
STRICT = {
    "PER": (1 / 3, 1 / 3, 1 / 3, 3),
    "LOC": (1, 1 / 2, 2 / 3, 2),
    "ORG": (1, 1, 1, 1),
    "micro": (3 / 5, 1 / 2, 6 / 11, 6),
    "macro": (7 / 9, 11 / 18, 2 / 3, 6),
    "weighted": (2 / 3, 1 / 2, 5 / 9, 6),
}
# Tokens: 12; wrong: Smith (I-PER/O), Berlin (B-LOC/B-PER), Mary (B-PER/I-PER) -> 9/12.
TOKEN_ACCURACY = 9 / 12


def row(precision, recall, f1, support) -> dict:
    return {
        "precision": approx(precision),
        "recall": approx(recall),
        "f1": approx(f1),
        "support": support,
    }


@pytest.fixture(scope="module")
def report() -> dict:
    return seqeval_report(GOLD, PRED)


@pytest.mark.parametrize(("mode", "expected"), [("default", DEFAULT), ("strict", STRICT)])
def test_seqeval_report_by_hand(report, mode, expected):
    table = report[mode]
    assert list(table["per_type"]) == ["LOC", "ORG", "PER"]  # sorted
    for name in ("PER", "LOC", "ORG"):
        assert table["per_type"][name] == row(*expected[name]), name
    for average in ("micro", "macro", "weighted"):
        assert table[average] == row(*expected[average]), average


def test_seqeval_report_counts(report):
    assert report["token_accuracy"] == approx(TOKEN_ACCURACY)
    assert report["n_sentences"] == 3
    assert report["n_tokens"] == 12


def test_seqeval_report_is_plain_json(report):
    assert json.loads(json.dumps(report)) == report


def test_seqeval_report_perfect():
    perfect = seqeval_report(GOLD, GOLD)
    for mode in ("default", "strict"):
        assert perfect[mode]["micro"] == row(1, 1, 1, 6)
    assert perfect["token_accuracy"] == 1.0


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_seqeval_report_without_entities_is_valid_json():
    # No entity anywhere: every rate is 0, never NaN (which JSON cannot hold).
    empty = seqeval_report([["O", "O"]], [["O", "O"]])
    for mode in ("default", "strict"):
        for average in ("micro", "macro", "weighted"):
            assert empty[mode][average] == row(0, 0, 0, 0)
        assert empty[mode]["per_type"] == {}
    assert empty["token_accuracy"] == 1.0
    text = json.dumps(empty, allow_nan=False)  # raises on NaN
    assert json.loads(text) == empty
    assert "nan" not in format_table(empty).lower()


def test_seqeval_report_type_only_predicted():
    spurious = seqeval_report([["O", "B-PER"]], [["B-LOC", "B-PER"]])
    default = spurious["default"]
    assert default["per_type"]["LOC"] == row(0, 0, 0, 0)
    assert default["per_type"]["PER"] == row(1, 1, 1, 1)
    assert default["micro"] == row(1 / 2, 1, 2 / 3, 1)


def test_markdown_report(report):
    text = markdown_report(report, title="tiny")
    assert text.startswith("# tiny\n")
    assert "- sentences: 3, tokens: 12, token accuracy: 75.00%" in text
    assert "## seqeval default (conlleval-compatible)" in text
    assert "## strict IOB2" in text
    default, strict = text.split("## strict IOB2")
    assert "| PER | 50.00 | 66.67 | 57.14 | 3 |" in default
    assert "| LOC | 100.00 | 50.00 | 66.67 | 2 |" in default
    assert "| ORG | 100.00 | 100.00 | 100.00 | 1 |" in default
    assert "| **micro avg** | 66.67 | 66.67 | 66.67 | 6 |" in default
    assert "| **macro avg** | 83.33 | 72.22 | 74.60 | 6 |" in default
    assert "| **weighted avg** | 75.00 | 66.67 | 67.46 | 6 |" in default
    assert "| PER | 33.33 | 33.33 | 33.33 | 3 |" in strict
    assert "| **micro avg** | 60.00 | 50.00 | 54.55 | 6 |" in strict
    assert "| **macro avg** | 77.78 | 61.11 | 66.67 | 6 |" in strict
    assert "predictions:" not in text  # no source given


def test_markdown_report_names_its_sources(report):
    text = markdown_report({**report, "source": "bundle x (int8)", "gold": "test.txt"})
    assert "- predictions: `bundle x (int8)`" in text
    assert "- gold: `test.txt`" in text


def test_format_table(report):
    lines = format_table(report).splitlines()
    assert lines[0].split() == ["type", "P", "R", "F1", "strict", "F1", "support"]
    assert set(lines[1]) == {"-"}
    rows = {line[:14].strip(): line[14:].split() for line in lines[2:-1]}
    # P, R, F1 (default mode), strict F1, support.
    assert rows == {
        "LOC": ["100.00", "50.00", "66.67", "66.67", "2"],
        "ORG": ["100.00", "100.00", "100.00", "100.00", "1"],
        "PER": ["50.00", "66.67", "57.14", "33.33", "3"],
        "micro avg": ["66.67", "66.67", "66.67", "54.55", "6"],
        "macro avg": ["83.33", "72.22", "74.60", "66.67", "6"],
        "weighted avg": ["75.00", "66.67", "67.46", "55.56", "6"],
    }
    assert lines[-1] == "token accuracy: 75.00%  (3 sentences, 12 tokens)"


def test_format_table_type_named_like_an_average():
    # A type whose name ends in "avg" is a type, not an average row.
    table = format_table(seqeval_report([["B-navg", "O"]], [["B-navg", "O"]]))
    assert "navg" in table
    assert table.count("avg") == 4


def test_format_table_type_missing_in_strict_mode():
    # I-MISC without B- is an entity only in default mode; strict mode has no MISC row.
    report = seqeval_report([["O", "B-PER"]], [["I-MISC", "B-PER"]])
    assert "MISC" not in report["strict"]["per_type"]
    misc = next(line for line in format_table(report).splitlines() if line.startswith("MISC"))
    assert misc.split() == ["MISC", "0.00", "0.00", "0.00", "0.00", "0"]


# --- corpus: gold records and their layout ---

GOLD_CONLL = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Smith NNP I-NP I-PER
visited VBD B-VP O
Zürich NNP B-NP B-LOC
. . O O

The DT B-NP O
Commission NNP I-NP B-ORG
met VBD B-VP O

-DOCSTART- -X- -X- O

-DOCSTART- -X- -X- O

Acme NNP B-NP B-ORG
said VBD B-VP O
"""


@pytest.fixture
def gold_documents(tmp_path) -> list[Document]:
    path = tmp_path / "gold.txt"
    path.write_text(GOLD_CONLL, encoding="utf-8")
    return read_conll(path)


def test_gold_records(gold_documents):
    assert gold_records(gold_documents) == [
        {"id": "gold.txt#doc0", "text": "John Smith visited Zürich .\nThe Commission met"},
        {"id": "gold.txt#doc2", "text": "Acme said"},
    ]
    assert gold_records(gold_documents, unit="sentence") == [
        {"id": "gold.txt#doc0/s0", "text": "John Smith visited Zürich ."},
        {"id": "gold.txt#doc0/s1", "text": "The Commission met"},
        {"id": "gold.txt#doc2/s0", "text": "Acme said"},
    ]
    with pytest.raises(ValueError, match="unit must be one of"):
        gold_records(gold_documents, unit="paragraph")


@pytest.mark.parametrize("unit", ["document", "sentence"])
def test_gold_layout_offsets_point_at_the_sentence_text(gold_documents, unit):
    sentences = sentences_of(gold_documents)
    layout = gold_layout(gold_documents)
    records = gold_records(gold_documents, unit)
    seen = []
    for record in records:
        for index, offset in layout[record["id"]]:
            sentence_text = " ".join(sentences[index].tokens)
            end = offset + len(sentence_text)
            assert record["text"][offset:end] == sentence_text
            assert end == len(record["text"]) or record["text"][end] == "\n"
            seen.append(index)
    assert seen == list(range(len(sentences)))  # every sentence once, in order


def test_gold_layout_covers_both_units(gold_documents):
    layout = gold_layout(gold_documents)
    assert layout == {
        "gold.txt#doc0": [(0, 0), (1, 28)],
        sentence_id("gold.txt#doc0", 0): [(0, 0)],
        sentence_id("gold.txt#doc0", 1): [(1, 0)],
        "gold.txt#doc2": [(2, 0)],
        "gold.txt#doc2/s0": [(2, 0)],
    }


def test_gold_layout_of_many_documents():
    documents = [
        Document(f"d{i}", [Sentence(["x"] * (j + 1), ["O"] * (j + 1)) for j in range(i + 1)])
        for i in range(4)
    ]
    layout = gold_layout(documents)
    for record in gold_records(documents):
        offsets = [offset for _, offset in layout[record["id"]]]
        lines = record["text"].split("\n")
        assert offsets == [sum(len(line) + 1 for line in lines[:k]) for k in range(len(lines))]
    assert [len(layout[d.doc_id]) for d in documents] == [1, 2, 3, 4]


def test_gold_to_corpus(tmp_path):
    gold = tmp_path / "gold.txt"
    gold.write_text(GOLD_CONLL, encoding="utf-8")
    out = tmp_path / "corpus.jsonl"
    assert gold_to_corpus(gold, out, unit="sentence") == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == gold_records(read_conll(gold), "sentence")
    assert "Zürich" in lines[0]  # not escaped


# --- the CLI's charts ----------------------------------------------------------------------------


def test_cli_score_png_writes_both_charts(tiny_bundle, tiny_conll, tmp_path):
    """`--png PREFIX` reaches `score()`: both charts are written, with no --markdown given."""
    from click.testing import CliRunner

    from ner_batch.cli import cli

    prefix = tmp_path / "charts" / "tiny"
    prefix.parent.mkdir()
    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(tiny_bundle), str(tiny_conll), "--png", str(prefix)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "micro avg" in result.output
    for chart in ("per_type", "confusion"):
        path = tmp_path / "charts" / f"tiny.{chart}.png"
        assert path.read_bytes().startswith(b"\x89PNG"), chart
    assert sorted(p.name for p in prefix.parent.iterdir()) == [
        "tiny.confusion.png",
        "tiny.per_type.png",
    ]


# --- how a model is batched when scored ----------------------------------------------------------


def test_scoring_batching_is_defined_once(tiny_bundle, monkeypatch):
    """score's batching comes from score.py's constants (export validates with the same), not from
    numbers written where a Tagger is made."""
    import inspect

    import ner_batch.score as score_module
    from ner_batch.score import (
        SCORING_BATCH_SIZE,
        SCORING_MAX_BATCH_TOKENS,
        load_tagger,
        score,
        scoring_options,
    )

    assert inspect.signature(score).parameters["batch_size"].default == SCORING_BATCH_SIZE
    assert inspect.signature(load_tagger).parameters["batch_size"].default == SCORING_BATCH_SIZE
    options = scoring_options()
    assert (options.batch_size, options.max_batch_tokens) == (64, 8192)
    tagger, _ = load_tagger(tiny_bundle, variant="fp32")
    assert (tagger.batch_size, tagger.max_batch_tokens) == (
        SCORING_BATCH_SIZE,
        SCORING_MAX_BATCH_TOKENS,
    )
    monkeypatch.setattr(score_module, "SCORING_MAX_BATCH_TOKENS", 1024)
    tagger, _ = load_tagger(tiny_bundle, variant="fp32", batch_size=8)
    assert (tagger.batch_size, tagger.max_batch_tokens) == (8, 1024)
