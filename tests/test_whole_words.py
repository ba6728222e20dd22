"""Words never cut: with a tokenizer that has no continuing-subword prefix (SentencePiece/Unigram as
in XLM-R and DeBERTa-v3, byte-level BPE as in RoBERTa), a word is a whitespace-delimited run of
characters, labelled by its first piece, and no span starts or ends inside one (issue 24).

The tiny random XLM-R, DeBERTa-v2 (v3-style Unigram) and RoBERTa models of tests/arch_models.py
are exported with `ner_batch.export.export` and annotated with `ner_batch.load` and `nerbatch
annotate`. The reference, `whole_word_spans`, is written here from the issue's words alone: the
Hugging Face tokenizer's pieces and the same PyTorch model's logits, whitespace words (`re`'s
`\\S+`), each piece in the word of the first non-space character at or after its start (a lone
"▁"/"Ġ" piece thus in the word after it; one piece over two words makes them one), each line on
its own (annotate's default `--segment lines`), the word's label and score from its first piece,
spans decoded by the scheme (`arch_models.decode`, lenient as annotate's argmax decoding).
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_models as am  # noqa: E402  (tests/ is on sys.path: pytest rootdir-relative import)
from click.testing import CliRunner  # noqa: E402

import ner_batch  # noqa: E402
from ner_batch.cli import cli  # noqa: E402

# Random weights: F1 comparisons between variants say nothing; logits and argmax still must agree.
SCORE_TOLERANCE = 1e-4  # ONNX Runtime fp32 against PyTorch fp32

# Text built to cut words: capitals and rare words that split into single letters behind a lone
# "▁" ("CHINA IN", "AL-AIN"), runs of spaces, tabs, newlines (\n, \r\n, blank lines), CJK
# without spaces, emoji (with ZWJ and flags, glued to a word), decomposed accents (combining
# marks after their letter), words made only of punctuation, non-breaking and ideographic
# spaces, a zero-width space (not whitespace: it joins), texts of spaces only, and no text.
HOSTILE = [
    "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .",
    "AL-AIN , United Arab Emirates 1996-12-06",
    "London   is    great  ,  said   Peter Blackburn .",
    "Tokyo\tBerlin\t\tCairo\t",
    "Line one about Berlin.\nLine two about Lagos.\n\nA third\r\nline in Paris \n Oslo",
    "北京市长在东京会见了联合国秘书长。 Beijing",
    "Anna 🙂🙂 met 👨\u200d👩\u200d👧 in Paris🇫🇷 today 🙂",
    "Rene\u0301e Mu\u0308ller visited Zu\u0308rich and Ko\u0308ln cafe\u0301",
    "John ... Smith !!! --- ?! Paris ( EU ) «» …",
    "Paris\u00a0France and 東京\u3000大阪 met\u2003Ana",
    "foo\u200bbar Zürich\u200b Köln",
    "   Leading and trailing whitespace   ",
    "Trailing newline in Rome\n",
    "   ",
    "",
    "controlled Controlled CONTROLLED uncontrolled",
    "O'Neil's U.S.-based firm, Acme Corp.'s CEO.",
]
TEXTS = am.ALL_SENTENCES + HOSTILE
CASES = [
    ("xlm-roberta", "iob2"),
    ("xlm-roberta", "bilou"),
    ("deberta-v2", "iob2"),
    ("deberta-v2", "bioes"),
    ("roberta", "iob2"),
    ("roberta", "bioes"),
]
NON_SPACE = re.compile(r"\S")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The cores are shared: intra-op threads spin against other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def whitespace_words(
    text: str, offsets: list[tuple[int, int]]
) -> tuple[list[tuple[int, int]], list[int | None]]:
    """(words, the word of each piece): words are runs of non-whitespace (`\\S+`); a piece is
    in the word of the first non-space character at or after its start (pieces after the last
    word are in none). A piece that reaches into later words (DeBERTa's one "<unk>" piece over
    "東京\\u3000大阪", an ideographic space inside) cannot be split: those words become one."""
    runs = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    starts = [start for start, _ in runs]
    first_last = []
    for start, end in offsets:
        found = NON_SPACE.search(text, start)
        if found is None:
            first_last.append(None)
            continue
        first = bisect.bisect_right(starts, found.start()) - 1
        first_last.append((first, max(first, bisect.bisect_left(starts, end) - 1)))
    glued = set()  # k: runs k and k + 1 are one word
    for span in filter(None, first_last):
        glued.update(range(span[0], span[1]))
    words: list[tuple[int, int]] = []
    word_of_run = []
    for k, (start, end) in enumerate(runs):
        if k - 1 in glued:
            words[-1] = (words[-1][0], end)
        else:
            words.append((start, end))
        word_of_run.append(len(words) - 1)
    return words, [None if span is None else word_of_run[span[0]] for span in first_last]


def whole_word_spans(model_dir: Path, texts: list[str]) -> list[list[dict]]:
    """Spans of whole whitespace words from the PyTorch logits of the model in `model_dir`
    (see the module docstring), as {start, end, label, score} dicts."""
    import numpy as np
    import torch

    model, tokenizer = am.load(model_dir)
    id2label = model.config.id2label
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        words, piece_words = whitespace_words(text, enc["offset_mapping"])
        # Each piece's line: that of the first non-space character at or after its start.
        lines = []
        for start, _ in enc["offset_mapping"]:
            found = NON_SPACE.search(text, start)
            lines.append(text.count("\n", 0, found.start() if found else len(text)))
        # One model input per line, as annotate's default `--segment lines` runs them.
        label_of: dict[int, tuple[str, float]] = {}  # word -> its first piece's (label, prob)
        line_of: dict[int, int] = {}
        i = 0
        while i < len(lines):
            j = i
            while j < len(lines) and lines[j] == lines[i]:
                j += 1
            # <s> ... </s> or [CLS] ... [SEP], as each of these tokenizers adds them
            ids = [tokenizer.cls_token_id, *enc["input_ids"][i:j], tokenizer.sep_token_id]
            assert len(ids) <= am.MAX_LEN, "one window per line: the reference has no windows"
            before = 1
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for k in range(i, j):
                word = piece_words[k]
                if word is not None and word not in label_of:
                    best = int(probs[before + k - i].argmax())
                    label_of[word] = (id2label[best], float(probs[before + k - i][best]))
                    line_of[word] = lines[k]
            i = j
        spans = []
        labelled = sorted(label_of)
        for line in sorted(set(line_of.values())):
            in_line = [w for w in labelled if line_of[w] == line]
            for kind, first, last in am.decode([label_of[w][0] for w in in_line]):
                scores = [label_of[w][1] for w in in_line[first : last + 1]]
                spans.append(
                    {
                        "start": words[in_line[first]][0],
                        "end": words[in_line[last]][1],
                        "label": kind,
                        "score": sum(scores) / len(scores),
                    }
                )
        out.append(spans)
    return out


def keys(spans: list[list[dict]]) -> list[set[tuple[int, int, str]]]:
    return [{(s["start"], s["end"], s["label"]) for s in doc} for doc in spans]


def agreement(ours: list[list[dict]], reference: list[list[dict]]) -> float:
    """Spans in both / spans in either (start, end and label exact), over all texts."""
    pairs = list(zip(keys(ours), keys(reference), strict=True))
    either = sum(len(a | b) for a, b in pairs)
    return sum(len(a & b) for a, b in pairs) / either if either else 1.0


def cuts(text: str, start: int, end: int) -> list[str]:
    """What is wrong with a span: empty, blank, or starting or ending inside a whitespace word."""
    if start >= end or not text[start:end].strip():
        return ["zero-width or blank"]
    if text[start].isspace() or text[end - 1].isspace():
        return ["starts or ends on whitespace"]
    wrong = []
    if start > 0 and not text[start - 1].isspace():
        wrong.append(f"starts inside the word at {start}")
    if end < len(text) and not text[end].isspace():
        wrong.append(f"ends inside the word at {end}")
    return wrong


def test_cuts_and_whitespace_words():
    """`cuts` and the reference's whitespace words, on the issue's examples."""
    text = "SOCCER - CHINA IN SURPRISE"
    assert cuts(text, 9, 17) == []  # "CHINA IN"
    assert cuts(text, 9, 16) == ["ends inside the word at 16"]  # "CHINA I", the pipeline's
    assert cuts("AL-AIN ,", 0, 1) == ["ends inside the word at 1"]
    assert cuts("controlled", 1, 10) == ["starts inside the word at 1"]
    assert cuts("a  b", 1, 3) == ["zero-width or blank"]
    assert cuts("a b", 1, 1) == ["zero-width or blank"]
    assert cuts("a b", 0, 2) == ["starts or ends on whitespace"]
    words = [m.group() for m in re.finditer(r"\S+", "北京 a\u00a0b\tc\u3000d\u200be\n")]
    assert words == ["北京", "a", "b", "c", "d\u200be"]


@pytest.mark.parametrize(("family", "scheme"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_spans_are_whole_words_of_the_same_logits(exported, family, scheme):
    model, bundle = exported(family, scheme)
    ours = ner_batch.load(str(bundle), variant="fp32", decode="argmax")(TEXTS)
    reference = whole_word_spans(model, TEXTS)
    assert sum(map(len, reference)) > len(TEXTS), "the random model finds entities"
    wrong = [
        (text, span["start"], span["end"], problem)
        for text, spans in zip(TEXTS, ours, strict=True)
        for span in spans
        for problem in cuts(text, span["start"], span["end"])
    ]
    assert wrong == []
    for text, spans in zip(TEXTS, ours, strict=True):
        assert all(text[s["start"] : s["end"]] == s["text"] for s in spans)
    # Exact: every logit is >= MIN_MARGIN from an argmax tie on ALL_SENTENCES (build() draws the
    # head so), and the hostile texts happen to have no tie either at these seeds.
    differ = [
        (text, sorted(a ^ b))
        for text, a, b in zip(TEXTS, keys(ours), keys(reference), strict=True)
        if a != b
    ]
    assert differ == [], (agreement(ours, reference), differ[:5])
    for doc, expected in zip(ours, reference, strict=True):
        by_key = {(s["start"], s["end"], s["label"]): s["score"] for s in expected}
        for span in doc:
            key = (span["start"], span["end"], span["label"])
            assert abs(span["score"] - by_key[key]) <= SCORE_TOLERANCE, (key, span["score"])


def test_the_pipeline_cuts_words_that_nerbatch_keeps_whole(exported):
    """What the issue saw: "IN" is the pieces "▁" (with the offsets of "I"), "I", "N", so the
    pipeline's words are "I" (the lone "▁") and "IN", and "CHINA I" is a span whenever the "▁"
    continues CHINA's entity; nerbatch's word is "IN" and its spans end at word ends."""
    model, bundle = exported("xlm-roberta", "iob2")
    text = "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT ."
    at = text.index(" IN ") + 1
    assert {(at, at + 1), (at, at + 2)} <= set(am.word_spans(model, text))
    encoder = ner_batch.load(str(bundle), variant="fp32", decode="argmax")
    spans = encoder([text])[0]
    assert all(cuts(text, s["start"], s["end"]) == [] for s in spans)
    pipeline = am.pipeline_spans(model, am.ALL_SENTENCES)
    cut = 0
    for text, doc in zip(am.ALL_SENTENCES, pipeline, strict=True):
        for s in doc:
            surface = text[s["start"] : s["end"]]
            if surface.strip():  # the pipeline's spans may keep the space of a "▁" piece
                start = s["start"] + len(surface) - len(surface.lstrip())
                end = s["end"] - (len(surface) - len(surface.rstrip()))
                cut += bool(cuts(text, start, end))
    assert cut > 0, "the pipeline cuts words of this model (else this test shows nothing)"


def test_annotate_cli_with_defaults_on_hostile_jsonl(exported, tmp_path):
    """`nerbatch annotate` with default options (int8, --segment lines) on a JSONL of hostile
    texts: every document is annotated, no span cuts a word or is blank, `text[start:end]` is
    the span, and the rows are the in-memory API's for the same texts."""
    _, bundle = exported("xlm-roberta", "iob2")
    corpus = tmp_path / "hostile.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)),
        encoding="utf-8",
    )
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        ["annotate", str(corpus), str(out), "--model", str(bundle)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    assert (counts["documents"], counts["annotated"], counts["rejected"]) == (len(TEXTS),) * 2 + (
        0,
    )
    assert len(rows) == counts["spans"] > len(TEXTS)
    texts = {f"d{i}": t for i, t in enumerate(TEXTS)}
    for row in rows:
        text = texts[row["doc_id"]]
        assert text[row["start"] : row["end"]] == row["text"]
        assert cuts(text, row["start"], row["end"]) == [], row
    expected = [
        (f"d{i}", s["start"], s["end"], s["label"], s["text"], s["score"])
        for i, doc in enumerate(ner_batch.load(str(bundle))(TEXTS))
        for s in doc
    ]
    assert [
        (r["doc_id"], r["start"], r["end"], r["label"], r["text"], r["score"]) for r in rows
    ] == expected


def test_an_output_begun_with_cut_words_is_not_resumed(exported, tmp_path):
    """An output that nerbatch < 0.5 began with such a bundle (cut words, no `words` setting)
    is refused, naming the setting; a WordPiece bundle's outputs record no `words`."""
    _, bundle = exported("xlm-roberta", "iob2")
    corpus = tmp_path / "in.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "out.parquet"
    command = ["annotate", str(corpus), str(out), "--model", str(bundle)]
    assert CliRunner().invoke(cli, command).exit_code == 0
    manifest_file = out / "_manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["settings"]["words"] == "whitespace"
    del manifest["settings"]["words"]  # as 0.4 wrote it
    manifest["complete"] = False
    manifest_file.write_text(json.dumps(manifest))
    (out / "_SUCCESS").unlink(missing_ok=True)
    again = CliRunner().invoke(cli, command)
    assert again.exit_code != 0
    assert "words None, now 'whitespace'" in again.output


def test_long_texts_in_pieces_keep_words_and_line_breaks(exported):
    """A text longer than `piece_chars` is tokenised in whitespace-cut pieces: with XLM-R's
    tokenizer ("▁" before every word whatever comes before) the words and line breaks are those
    of the whole text."""
    import numpy as np

    from ner_batch.features import TextEncoder

    _, bundle = exported("xlm-roberta", "iob2")
    encoder = TextEncoder(bundle / "tokenizer.json", word_shapes=False, word_rule="pipeline")
    text = " ".join(HOSTILE[:6] * 20)
    whole = encoder.encode(text)
    encoder.piece_chars = 97
    pieces = encoder.encode(text)
    for field in ("ids", "starts", "ends", "word_ids", "first", "newlines"):
        assert np.array_equal(getattr(whole, field), getattr(pieces, field)), field
    assert int(whole.newlines.sum()) == text.count("\n")


@st.composite
def pieces_of_text(draw):
    """A text of letters and whitespace, and pieces over it as tokenizers make them: contiguous
    cuts, some pieces dropped (XLM-R drops whitespace), empty ones (a trimmed "Ġ") and lone ones
    with the offsets of the character after them (a "▁")."""
    text = draw(st.text(alphabet="ab \n\t\u3000", max_size=24))
    cuts_at = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts_at, len(text)]
    offsets = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        kind = draw(st.sampled_from(["keep", "keep", "drop", "lone"]))
        if kind == "lone" and start < len(text):
            offsets.append((start, start + 1))
        if kind != "drop":
            offsets.append((start, end))
    return text, offsets


@given(pieces_of_text())
@settings(max_examples=400, deadline=None)
def test_the_encoder_groups_pieces_as_the_reference(case):
    """TextEncoder's whole words (array operations) group any pieces as `whitespace_words`
    does, pieces after the last word going with the word before them."""
    import numpy as np

    from ner_batch.features import Encoded, TextEncoder

    text, offsets = case
    n = len(offsets)
    enc = Encoded(
        ids=np.zeros(n, dtype=np.int64),
        type_ids=np.zeros(n, dtype=np.int64),
        starts=np.array([start for start, _ in offsets], dtype=np.int64),
        ends=np.array([end for _, end in offsets], dtype=np.int64),
        word_ids=np.arange(n, dtype=np.int64),
        first=np.ones(n, dtype=bool),
    )
    TextEncoder._whole_words(text, enc)
    _, piece_words = whitespace_words(text, offsets)
    expected: list[int] = []  # dense word numbers; a piece in no word joins the one before
    for i, word in enumerate(piece_words):
        opens = i == 0 or (word is not None and word != piece_words[i - 1])
        expected.append(expected[-1] + opens if expected else 0)
    assert enc.word_ids.tolist() == expected
    assert enc.first.tolist() == [i == 0 or expected[i] != expected[i - 1] for i in range(n)]
