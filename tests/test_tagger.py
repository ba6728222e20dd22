"""The tagger: character offsets on nasty text, BIO repair and scores, windows over long
documents, and agreement of the ONNX variants with the PyTorch checkpoint."""

from __future__ import annotations

import json
import random
import re
import tempfile

import numpy as np
import pytest
from helpers import (
    check_spans,
    constant_logits_fn,
    hashed_logits_fn,
    probability,
    vocab_logits_fn,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from ner_batch import backends
from ner_batch.bundle import load_bundle
from ner_batch.errors import NerbatchError
from ner_batch.features import windows
from ner_batch.runtimes import open_tagger
from ner_batch.tagger import Tagger, TaggerOptions

# Pieces of hostile text: runs of whitespace of every kind, accents precomposed and combining,
# marks with no base, emoji sequences, CJK, right-to-left scripts, controls, NUL, BOM.
PIECES = [
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\x0b",
    "\x1c",
    "\x85",
    "John",
    "smith",
    "Paris",
    "the",
    "école",
    "e\u0301cole",
    "e\u0301",
    "\u0301",
    "\u0301\u0302",
    "a\u20dd",
    "\u093f",
    "中\u093f",  # a spacing mark the pre-tokenizer splits from its CJK base
    "(\u093fx",
    "हिन्दी",
    "naïve",
    "İstanbul",
    "ﬁne",
    "👍",
    "👍🏽",
    "❤️",
    "👨\u200d👩\u200d👧",
    "\U0001f600\u0301",
    "中文",
    "東京",
    "שָׁלוֹם",
    "مرحبا",
    "\u200f",
    "\u200b",
    "\x00",
    "\x01",
    "\x7f",
    "\ufeff",
    "\ufffd",
    ".",
    ",",
    "U.S.",
    "(",
    "ＡＢＣ",
    "1990",
]

nasty_text = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)), max_size=20).map("".join),
)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def onnx_tagger(bundle):
    return open_tagger(bundle, variant="fp32", threads=1)


def fake_tagger(bundle, logits_fn, max_length=32, stride=8, decode="argmax") -> Tagger:
    """A Tagger over made-up logits; argmax decoding by default, so that each word's label is
    the one its logits favour (the tests of repair and offsets rely on it)."""
    options = TaggerOptions(decode=decode)
    return Tagger(bundle.encoder(), bundle.labels, logits_fn, max_length, stride, options)


# --- offsets -------------------------------------------------------------------------------------


# Hypothesis keeps examples and caches in ./.hypothesis, and its pytest plugin writes there while
# collecting, before any fixture runs: point it at a temporary directory when this module loads.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="nerbatch-hypothesis-"))
SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(texts=st.lists(nasty_text, min_size=1, max_size=4))
def test_onnx_spans_are_valid_offsets(onnx_tagger, texts):
    types = onnx_tagger.labels.types
    for text, spans in zip(texts, onnx_tagger.tag(texts), strict=True):
        check_spans(text, spans, types)


@SETTINGS
@given(texts=st.lists(nasty_text, min_size=1, max_size=4))
def test_forced_spans_are_valid_offsets(bundle, texts):
    """Pseudo-random labels per sub-token: spans surely exist, with every BIO pattern."""
    tagger = fake_tagger(bundle, hashed_logits_fn(bundle.labels), max_length=16, stride=4)
    for text, spans in zip(texts, tagger.tag(texts), strict=True):
        check_spans(text, spans, tagger.labels.types)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \t\n ",
        "\x00\x01\u200b",
        "\u0301",
        "é",
        "中\u093fx",
        "(\u093fx",
        "中\u093f",
        "x\u0301\u0302 y",
    ],
)
def test_spans_valid_on_edge_cases(bundle, text):
    for label in ("B-PER", "I-PER"):
        tagger = fake_tagger(bundle, constant_logits_fn(bundle.labels, label))
        check_spans(text, tagger.tag([text])[0], tagger.labels.types)


NASTY_WORDS = [
    "école",
    "e\u0301te\u0301",
    "naïve",
    "İstanbul",
    "x\u20dd",
    "👍🏽",
    "❤️",
    "中",
    "שָׁלוֹם",
    "مرحبا",
    "ＡＢＣ",
    "a\x00b",
    "हिन्दी",
    "😀\u0301",
]
SEPARATORS = [" ", "  ", "\t", "\n", " \u00a0 ", "\r\n", "\u3000", "\x00 "]


def test_every_word_b_is_one_span_per_word(bundle):
    text = ""
    for i, word in enumerate(NASTY_WORDS):
        text += SEPARATORS[i % len(SEPARATORS)] + word
    text += "  \n"
    tagger = fake_tagger(bundle, constant_logits_fn(bundle.labels, "B-PER"))
    spans = tagger.tag([text])[0]
    assert [text[s.start : s.end] for s in spans] == NASTY_WORDS
    assert {s.label for s in spans} == {"PER"}
    check_spans(text, spans, ["PER"])


def test_every_word_i_is_one_span_over_everything(bundle):
    """I- after O opens an entity; I- after I- of the same type continues it."""
    words = NASTY_WORDS
    text = "\n\t " + "  ".join(words) + " \t"
    tagger = fake_tagger(bundle, constant_logits_fn(bundle.labels, "I-PER"), max_length=16)
    (span,) = tagger.tag([text])[0]
    assert text[span.start : span.end] == "  ".join(words)
    assert span.label == "PER"


def test_bio_repair_and_mean_score(bundle):
    encoder = bundle.encoder()
    n = len(bundle.labels)
    tagger = fake_tagger(
        bundle,
        vocab_logits_fn(
            encoder,
            bundle.labels,
            {
                "john": ("B-PER", 5.0),
                "smith": ("I-PER", 1.0),
                "paris": ("I-LOC", 3.0),  # I- after O: opens a LOC
                "london": ("I-PER", 2.0),  # I-PER after LOC: opens a PER
                "mary": ("I-LOC", 4.0),  # I-LOC after PER: opens a LOC
                "peter": ("B-PER", 5.0),  # B- after B- of the same type: a new PER
                "berlin": ("B-PER", 5.0),
                "##s": ("B-LOC", 5.0),  # not a first sub-token: ignored
            },
        ),
    )
    text = "John  Smith the\tParis London Mary , Peter Berlin Johns"
    spans = tagger.tag([text])[0]
    got = [(text[s.start : s.end], s.label) for s in spans]
    assert got == [
        ("John  Smith", "PER"),
        ("Paris", "LOC"),
        ("London", "PER"),
        ("Mary", "LOC"),
        ("Peter", "PER"),
        ("Berlin", "PER"),
        ("Johns", "PER"),
    ]
    expected = [
        (probability(n, 5.0) + probability(n, 1.0)) / 2,
        probability(n, 3.0),
        probability(n, 2.0),
        probability(n, 4.0),
    ]
    assert [s.score for s in spans[:4]] == pytest.approx(expected, rel=1e-5)


# --- windows -------------------------------------------------------------------------------------


def test_long_document_gets_a_label_for_every_word(bundle):
    tagger = open_tagger(bundle, variant="fp32", max_length=16, threads=1)
    assert tagger.window == 14
    words = ["John", "visited", "Paris", "with", "Mary", ",", "é", "中", "acmeinc"] * 60
    text = " ".join(words)
    encoded = tagger.encoder.encode(text)
    assert len(encoded) > 20 * tagger.window
    (prediction,) = tagger.predict([encoded])
    n_words = len(words)
    assert len(prediction.labels) == len(prediction.probs) == n_words
    assert encoded.n_words == n_words
    found = [text[s:e] for s, e in zip(prediction.word_starts, prediction.word_ends, strict=True)]
    assert found == words
    assert (prediction.probs > 0).all()
    check_spans(text, tagger.spans(text, prediction), tagger.labels.types)


def test_long_document_windowed_equals_unwindowed_for_context_free_logits(bundle):
    logits_fn = hashed_logits_fn(bundle.labels, seed=3, positional=False)
    text = " ".join(["John Smith visited Paris , London and Berlin ."] * 40)
    short = fake_tagger(bundle, logits_fn, max_length=16, stride=4)
    whole = fake_tagger(bundle, logits_fn, max_length=2048, stride=8)
    assert short.tag([text]) == whole.tag([text])


def window_start_logits_fn(bundle):
    """Like a model that lacks left context: the first `john` of each window row is B-PER,
    the other johns I-PER, everything else O."""
    encoder = bundle.encoder()
    john = encoder.tokenizer.token_to_id("john")
    labels = bundle.labels
    outside, begin, inside = (labels.index(x) for x in ("O", "B-PER", "I-PER"))

    def logits(ids, mask, types):
        out = np.zeros((*ids.shape, len(labels)), dtype=np.float32)
        is_john = ids == john
        first = is_john & (np.cumsum(is_john, axis=1) == 1)
        out[..., outside] = np.where(is_john, 0.0, 5.0)
        out[..., inside] = np.where(is_john & ~first, 5.0, 0.0)
        out[..., begin] = np.where(first, 5.0, 0.0)
        return out

    return logits


def test_entity_across_window_boundaries_is_one_span(bundle):
    text = "the a of " + " ".join(["John"] * 80) + " said the city ."
    tagger = fake_tagger(bundle, window_start_logits_fn(bundle), max_length=16, stride=4)
    assert len(windows(len(tagger.encoder.encode(text)), tagger.window, 4)) > 5
    (span,) = tagger.tag([text])[0]
    assert text[span.start : span.end] == " ".join(["John"] * 80)
    assert span.label == "PER"
    # Without overlap each window starts blind: the same model splits the entity.
    blind = fake_tagger(bundle, window_start_logits_fn(bundle), max_length=16, stride=0)
    assert len(blind.tag([text])[0]) > 1


def test_megabyte_document(bundle):
    tagger = open_tagger(bundle, variant="fp32", threads=1, max_length=128, stride=16)
    rng = random.Random(0)
    vocabulary = ["the", "a", "of", "John", "Smith", "Paris", "London", "said", "é", "中", "."]
    text = " ".join(rng.choice(vocabulary) for _ in range(270_000))
    assert len(text) > 1_000_000
    (prediction,) = tagger.predict([tagger.encoder.encode(text)])
    assert len(prediction.labels) == len(re.findall(r"\S+", text))
    spans = tagger.spans(text, prediction)
    assert spans
    check_spans(text, spans, tagger.labels.types)


# --- ONNX vs PyTorch -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    from ner_batch.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)


def random_batch(encoder, rng, batch: int, seq: int):
    """(ids, mask, types) of `batch` rows padded to `seq`, with rows of varied length."""
    vocab = encoder.tokenizer.get_vocab_size()
    ids = np.full((batch, seq), encoder.pad_id, dtype=np.int64)
    mask = np.zeros((batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    for row in range(batch):
        length = seq if row == 0 else int(rng.integers(3, seq + 1))
        body = rng.integers(5, vocab, size=length - 2)
        ids[row, :length] = np.concatenate([encoder.prefix_ids, body, encoder.suffix_ids])
        mask[row, :length] = 1
        types[row, 1 : length - 1] = rng.integers(0, 6, size=length - 2)
    return ids, mask, types


def variant_logits_fn(bundle, variant: str):
    """The variant's LogitsFn on ONNX Runtime, one thread."""
    file = bundle.path / bundle.meta["variants"][variant]["file"]
    return backends.load("onnxruntime", file, threads=1).logits


@pytest.mark.parametrize(("batch", "seq"), [(1, 3), (1, 32), (3, 17), (8, 9), (5, 64)])
def test_onnx_fp32_matches_pytorch(bundle, checkpoint, batch, seq):
    from ner_batch.checkpoint import torch_logits_fn

    model, encoder, _ = checkpoint
    rng = np.random.default_rng(batch * 100 + seq)
    inputs = random_batch(encoder, rng, batch, seq)
    expected = torch_logits_fn(model)(*inputs)
    got = variant_logits_fn(bundle, "fp32")(*inputs)
    assert got.shape == expected.shape == (batch, seq, len(bundle.labels))
    mask = inputs[1].astype(bool)
    assert np.abs(got - expected)[mask].max() < 1e-3


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_reduced_precision_argmax_mostly_agrees(bundle, checkpoint, variant):
    from ner_batch.checkpoint import torch_logits_fn

    model, encoder, _ = checkpoint
    rng = np.random.default_rng(7)
    inputs = random_batch(encoder, rng, 6, 24)
    mask = inputs[1].astype(bool)
    expected = torch_logits_fn(model)(*inputs).argmax(-1)[mask]
    bundle.verify(variant)
    got = variant_logits_fn(bundle, variant)(*inputs).argmax(-1)[mask]
    assert (got == expected).mean() >= 0.9


def test_int8_ops_choose_what_is_quantized(tiny_bundle, tiny_checkpoint, tiny_conll, tmp_path):
    """Default int8 keeps the fused attention in float (QAttention cost 0.25 test F1 on the
    real model); `--int8-ops matmul+attention` quantizes it too. Both say so in bundle.json."""
    import onnx
    from click.testing import CliRunner

    from ner_batch.cli import cli

    def int8_ops_of(bundle_dir):
        meta = json.loads((bundle_dir / "bundle.json").read_text())
        graph = onnx.load(bundle_dir / meta["variants"]["int8"]["file"]).graph
        return meta["variants"]["int8"]["int8_ops"], {n.op_type for n in graph.node}

    ops, nodes = int8_ops_of(tiny_bundle)
    assert ops == "matmul" and "Attention" in nodes and "QAttention" not in nodes
    assert "MatMulInteger" in nodes or "DynamicQuantizeMatMul" in nodes

    out = tmp_path / "fast"
    result = CliRunner().invoke(
        cli,
        [
            "export", str(tiny_checkpoint), "--out", str(out), "--dev", str(tiny_conll),
            "--variants", "int8", "--int8-ops", "matmul+attention", "--keep-failed",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ops, nodes = int8_ops_of(out)
    assert ops == "matmul+attention" and "QAttention" in nodes and "Attention" not in nodes
    tagger = open_tagger(load_bundle(out), variant="int8", threads=1)
    text = "John Smith visited Paris ."
    check_spans(text, tagger.tag([text])[0], tagger.labels.types)

    bad = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--int8-ops", "all"])
    assert bad.exit_code == 2 and "'all' is not one of" in bad.output
    # The CLI lists the recipes itself (importing export would load torch into every command).
    from ner_batch.choices import INT8_OPS

    option = next(p for p in cli.commands["export"].params if p.name == "int8_ops")
    assert set(option.type.choices) == set(INT8_OPS)


def test_onnx_tagger_matches_pytorch_tagger(bundle, checkpoint, onnx_tagger):
    from ner_batch.checkpoint import torch_logits_fn

    model, encoder, meta = checkpoint
    torch_tagger = Tagger(encoder, meta["labels"], torch_logits_fn(model), 16, 4)
    onnx_small = open_tagger(bundle, variant="fp32", max_length=16, stride=4, threads=1)
    texts = ["John Smith visited Paris .", "", " ".join(["Mary met the European Commission"] * 9)]
    encoded = [encoder.encode(t) for t in texts]
    for a, b in zip(torch_tagger.predict(encoded), onnx_small.predict(encoded), strict=True):
        assert len(a.labels) == len(b.labels)
        if len(a.labels):
            assert (a.labels == b.labels).mean() >= 0.95
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-3)


# --- segments: line breaks as context boundaries ---------------------------------------------


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("lines", [(0, 2), (2, 4), (4, 5)]), ("paragraphs", [(0, 4), (4, 5)]), ("none", [(0, 5)])],
)
def test_windows_stop_at_segment_boundaries(tiny_bundle, segment, expected):
    bundle = load_bundle(tiny_bundle)
    tagger = open_tagger(bundle, variant="fp32", options=TaggerOptions(segment=segment))
    encoded = tagger.encoder.encode("john smith\nmary paris\n\nberlin")
    assert len(encoded) == 5
    assert tagger._windows(encoded) == expected


@pytest.mark.parametrize(("segment", "n_spans"), [("lines", 2), ("none", 1)])
def test_an_entity_never_crosses_a_segment_boundary(tiny_bundle, segment, n_spans):
    bundle = load_bundle(tiny_bundle)
    labels = bundle.labels
    tagger = Tagger(
        bundle.encoder(),
        labels,
        constant_logits_fn(labels, "I-PER"),
        32,
        8,
        TaggerOptions(segment=segment),
    )
    text = "John Smith\nMary Jones"
    spans = tagger.tag([text])[0]
    assert len(spans) == n_spans
    assert [text[s.start : s.end] for s in spans] == (
        ["John Smith", "Mary Jones"] if n_spans == 2 else [text]
    )


def test_a_span_opened_by_a_lone_mark_never_starts_on_whitespace(bundle):
    """Found by hypothesis: a spacing mark alone at the start is a word of its own; a span that
    begins on it moves past it, and then past the whitespace after it."""
    labels = bundle.labels
    tagger = fake_tagger(bundle, constant_logits_fn(labels, "I-PER"))
    text = "\u093f\x0bJohn"
    spans = tagger.tag([text])[0]
    check_spans(text, spans, tagger.labels.types)
    assert [text[s.start : s.end] for s in spans] == ["John"]


def test_streams_give_the_same_spans_as_one_at_a_time(bundle):
    """Several batches in flight at once (a real ONNX Runtime session shared by the threads)
    change nothing in the output, whatever order the batches finish in."""
    rng = random.Random(5)
    words = ["John", "Smith", "visited", "Paris", "and", "Berlin", "for", "Acme", "Corp", "."]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(200)]
    one = open_tagger(
        bundle, "fp32", threads=1, max_length=24, stride=4, options=TaggerOptions(batch_size=4)
    )
    many = open_tagger(
        bundle,
        "fp32",
        threads=2,
        max_length=24,
        stride=4,
        options=TaggerOptions(batch_size=4, streams=3),
    )
    assert many.streams == 3
    assert many.tag(texts) == one.tag(texts)
    assert open_tagger(bundle, "fp32", options=TaggerOptions(streams=0)).streams == 1  # ORT's best
    with pytest.raises(NerbatchError, match="streams must be >= 0"):
        open_tagger(bundle, "fp32", options=TaggerOptions(streams=-1))
