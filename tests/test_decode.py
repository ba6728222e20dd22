"""Scheme-constrained decoding: the allowed transitions of each scheme, Viterbi against an
exhaustive search, and `--decode` through the tagger, the CLI and the run's settings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ner_batch.conll import chunks, to_iob2
from ner_batch.decode import decode_words, is_valid, transitions, viterbi
from ner_batch.tagger import Tagger, TaggerOptions

IOB2 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
BILOU = ["O", "B-PER", "I-PER", "L-PER", "U-PER"]


def _valid_by_hand(tags: list[str], scheme: str) -> bool:
    """Written from the schemes' definitions, independently of decode.transitions."""
    open_type = None
    for tag in tags:
        prefix, _, kind = tag.partition("-")
        if scheme == "IOB1":
            if prefix == "B" and open_type != kind:
                return False
            open_type = None if prefix == "O" else kind
            continue
        if prefix in ("I", "E", "L") and open_type != kind:
            return False
        if scheme in ("BIOES", "BILOU") and prefix in ("O", "B", "S", "U") and open_type:
            return False
        open_type = kind if prefix in ("B", "I") else None
    return scheme in ("IOB1", "IOB2") or open_type is None


@pytest.mark.parametrize(
    "labels,scheme", [(IOB2, "IOB2"), (IOB2, "IOB1"), (BIOES, "BIOES"), (BILOU, "BILOU")]
)
def test_is_valid_matches_the_schemes_definition_on_every_short_sequence(labels, scheme):
    rules = transitions(labels, scheme)
    for path in itertools.product(range(len(labels)), repeat=3):
        tags = [labels[i] for i in path]
        assert is_valid(np.array(path), rules) == _valid_by_hand(tags, scheme), tags


@pytest.mark.parametrize(
    "labels,scheme", [(IOB2, "IOB2"), (IOB2, "IOB1"), (BIOES, "BIOES"), (BILOU, "BILOU")]
)
def test_viterbi_is_the_best_valid_sequence(labels, scheme):
    """Against an exhaustive search over every sequence of 4 words, on random probabilities
    (peaked ones too, where argmax is often invalid)."""
    rng = np.random.default_rng(7)
    rules = transitions(labels, scheme)
    n = 4
    paths = np.array(list(itertools.product(range(len(labels)), repeat=n)))
    valid = np.array([_valid_by_hand([labels[i] for i in p], scheme) for p in paths])
    for trial in range(60):
        logits = rng.normal(size=(n, len(labels))) * (1 + 4 * (trial % 2))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        scores = np.log(probs)[np.arange(n), paths].sum(-1)
        best = paths[valid][scores[valid].argmax()]
        found = viterbi(probs.astype(np.float32), rules)
        assert is_valid(found, rules)
        got = np.log(probs)[np.arange(n), found].sum()
        assert got == pytest.approx(scores[valid].max(), abs=1e-5), (best, found)


def test_argmax_that_is_valid_is_kept_and_invalid_argmax_is_fixed():
    rules = transitions(IOB2)
    probs = np.array(
        [
            [0.9, 0.05, 0.02, 0.02, 0.01],  # O
            [0.1, 0.1, 0.6, 0.1, 0.1],  # I-PER after O: invalid
            [0.1, 0.1, 0.7, 0.05, 0.05],  # I-PER
        ],
        dtype=np.float32,
    )
    labels, chosen = decode_words(probs, rules, "argmax")
    assert [IOB2[i] for i in labels] == ["O", "I-PER", "I-PER"]
    labels, chosen = decode_words(probs, rules, "viterbi")
    # O B-PER I-PER (0.9*0.1*0.7) beats O O O (0.9*0.1*0.1) and B-PER I-PER I-PER (0.05*...)
    assert [IOB2[i] for i in labels] == ["O", "B-PER", "I-PER"]
    assert chosen.tolist() == pytest.approx([0.9, 0.1, 0.7])
    fine = probs.copy()
    fine[1] = [0.1, 0.6, 0.1, 0.1, 0.1]
    assert decode_words(fine, rules, "viterbi")[0].tolist() == decode_words(fine, rules)[0].tolist()


def test_restarts_open_a_new_sequence():
    """A word after a segment break cannot continue the entity before it."""
    rules = transitions(IOB2)
    probs = np.full((2, 5), 0.05, dtype=np.float32)
    probs[0, 1], probs[1, 2] = 0.8, 0.8  # B-PER | I-PER
    free = viterbi(probs, rules)
    assert [IOB2[i] for i in free] == ["B-PER", "I-PER"]
    broken = viterbi(probs, rules, restarts=np.array([True, True]))
    assert IOB2[broken[1]] != "I-PER"
    assert is_valid(broken, rules, np.array([True, True]))


def test_bioes_sequence_must_close():
    rules = transitions(BIOES)
    probs = np.full((2, len(BIOES)), 0.01, dtype=np.float32)
    probs[0, BIOES.index("B-PER")] = 0.9
    probs[1, BIOES.index("I-PER")] = 0.9  # an entity left open at the end
    found = [BIOES[i] for i in viterbi(probs, rules)]
    assert found[-1] in ("O", "E-PER", "S-PER", "E-LOC", "S-LOC")
    assert _valid_by_hand(found, "BIOES")


def test_prefix_less_labels_have_nothing_to_constrain():
    assert not transitions(["O", "PER", "LOC"]).constrains
    assert not transitions(["O", "PER"], "IO").constrains
    with pytest.raises(ValueError, match="unknown label scheme"):
        transitions(IOB2, "IOBX")
    with pytest.raises(ValueError, match="unknown decoding"):
        TaggerOptions(decode="beam").check()


class _Encoder:
    """Whitespace words, one sub-token each (enough for the decoding path of the Tagger)."""

    prefix_ids: list[int] = [1]
    suffix_ids: list[int] = [2]
    n_special = 2
    pad_id = 0

    def encode_batch(self, texts):
        from ner_batch.features import Encoded

        out = []
        for text in texts:
            starts, ends, pos = [], [], 0
            for word in text.split(" "):
                starts.append(pos)
                ends.append(pos + len(word))
                pos += len(word) + 1
            n = len(starts)
            out.append(
                Encoded(
                    ids=np.arange(3, 3 + n, dtype=np.int64),
                    type_ids=np.zeros(n, dtype=np.int64),
                    starts=np.array(starts, dtype=np.int64),
                    ends=np.array(ends, dtype=np.int64),
                    word_ids=np.arange(n, dtype=np.int64),
                    first=np.ones(n, dtype=bool),
                )
            )
        return out


def test_tagger_viterbi_gives_valid_spans_from_invalid_logits():
    """Logits whose argmax is `O I-PER I-LOC`: argmax repairs to two entities (PER, LOC);
    Viterbi picks the best valid sequence instead."""
    table = np.log(
        np.array(
            [
                [0.9, 0.02, 0.04, 0.02, 0.02],
                [0.3, 0.25, 0.4, 0.03, 0.02],
                [0.2, 0.02, 0.38, 0.0, 0.4],
            ],
            dtype=np.float32,
        )
        + 1e-9
    )

    def logits_fn(ids, mask, types):
        out = np.zeros((*ids.shape, 5), dtype=np.float32)
        out[:, 1:4] = table[None]
        return out

    text = "The Jan Smit"
    argmax = Tagger(_Encoder(), IOB2, logits_fn, 16, 2, TaggerOptions(decode="argmax"))
    argmax = argmax.tag([text])[0]
    assert [(s.label, text[s.start : s.end]) for s in argmax] == [("PER", "Jan"), ("LOC", "Smit")]
    tagger = Tagger(_Encoder(), IOB2, logits_fn, 16, 2, TaggerOptions(decode="viterbi"))
    spans = tagger.tag([text])[0]
    # O B-PER I-PER: 0.9 * 0.25 * 0.38 beats O O B-LOC... and the others
    assert [(s.label, text[s.start : s.end]) for s in spans] == [("PER", "Jan Smit")]
    assert spans[0].score == pytest.approx((0.25 + 0.38) / 2, abs=1e-4)


def test_iob1_model_is_decoded_in_iob1():
    """An IOB1 model's I- opens entities; only B- needs an entity of its type before it."""
    rules = transitions(IOB2, "IOB1")
    probs = np.full((2, 5), 0.01, dtype=np.float32)
    probs[0, IOB2.index("I-PER")] = 0.9
    probs[1, IOB2.index("B-PER")] = 0.9
    assert [IOB2[i] for i in viterbi(probs, rules)] == ["I-PER", "B-PER"]
    assert chunks(to_iob2(["I-PER", "B-PER"], "iob1")) == [("PER", 0, 1), ("PER", 1, 2)]


def _annotate(*arguments) -> object:
    from click.testing import CliRunner

    from ner_batch.cli import cli

    return CliRunner().invoke(cli, ["--log-format", "text", "annotate", *map(str, arguments)])


def test_annotate_cli_records_decode_and_refuses_an_unknown_one(tmp_path, tiny_bundle):
    """Default options but --decode, hostile input (a broken line, blank lines, a long text)."""
    corpus = tmp_path / "in.jsonl"
    texts = [f"Jan Smit ging naar Parijs {i}\n\nBrussel  en\tNew York" for i in range(30)]
    texts.append(" ".join(["Peter Müller in Zürich."] * 400))
    lines = [json.dumps({"id": str(i), "text": t}) for i, t in enumerate(texts)]
    corpus.write_text("\n".join(lines) + "\n{broken\n")
    out = tmp_path / "out.parquet"
    result = _annotate(corpus, out, "--model", tiny_bundle, "--decode", "viterbi")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["settings"]["decode"] == "viterbi"
    assert manifest["counts"]["rejected"] == 1
    table = pq.read_table(out)
    assert set(table.column("doc_id").to_pylist()) <= {str(i) for i in range(len(texts))}
    for row in table.to_pylist():  # one row per span
        assert texts[int(row["doc_id"])][row["start"] : row["end"]] == row["text"]
    # the same output resumed with another decoding is refused, like any other setting
    again = _annotate(corpus, out, "--model", tiny_bundle, "--decode", "argmax")
    assert again.exit_code != 0 and "decode" in again.output
    bad = _annotate(corpus, tmp_path / "x.parquet", "--model", tiny_bundle, "--decode", "beam")
    assert bad.exit_code == 2 and "beam" in bad.output


def test_default_is_viterbi_and_a_resumed_output_keeps_its_decoding(
    tmp_path, tiny_bundle, monkeypatch
):
    """Default options: a new output is decoded with Viterbi and says so. An output that
    nerbatch 0.4 began (argmax; no `decode` recorded) and a crash cut short resumes with argmax
    when --decode is not given, to the rows of an uninterrupted argmax run; --decode viterbi on
    it is refused."""
    import ner_batch.annotate as annotate_module
    from ner_batch.annotate import AnnotateConfig, annotate

    class Crash(Exception):
        pass

    corpus = tmp_path / "in.jsonl"
    texts = [f"Jan Smit ging naar Parijs {i}\nBrussel" for i in range(40)]
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )
    new = tmp_path / "new.parquet"
    assert _annotate(corpus, new, "--model", tiny_bundle).exit_code == 0
    assert json.loads((new / "_manifest.json").read_text())["settings"]["decode"] == "viterbi"

    whole = tmp_path / "whole.parquet"
    argmax = ("--model", tiny_bundle, "--decode", "argmax", "--part-docs", "10")
    assert _annotate(corpus, whole, *argmax).exit_code == 0
    old = tmp_path / "old.parquet"
    real = annotate_module.documents

    def crashing(files, read, *position):
        for n, item in enumerate(real(files, read, *position)):
            if n == 25:
                raise Crash
            yield item

    monkeypatch.setattr(annotate_module, "documents", crashing)
    config = AnnotateConfig([str(corpus)], str(old), model=str(tiny_bundle), decode="argmax")
    config.part_docs = 10
    with pytest.raises(Crash):
        annotate(config)
    monkeypatch.setattr(annotate_module, "documents", real)
    manifest_file = old / "_manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["parts"] and not manifest["complete"]
    del manifest["settings"]["decode"]  # as nerbatch 0.4 wrote it
    manifest_file.write_text(json.dumps(manifest))
    refused = _annotate(corpus, old, "--model", tiny_bundle, "--decode", "viterbi")
    assert refused.exit_code != 0 and "decode 'argmax', now 'viterbi'" in refused.output
    resumed = _annotate(corpus, old, "--model", tiny_bundle, "--part-docs", "10")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(manifest_file.read_text())["settings"]["decode"] == "argmax"
    assert pq.read_table(old).to_pylist() == pq.read_table(whole).to_pylist()
