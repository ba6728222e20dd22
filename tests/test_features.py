"""Text features and label alignment: word shapes, the sub-token encoder on the tiny WordPiece
tokenizer of conftest.py, sliding windows and their owners, and how training labels sub-tokens
(train.align_labels / build_examples)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from ner_batch.conll import Sentence, token_offsets
from ner_batch.errors import NerbatchError
from ner_batch.features import (
    SHAPES,
    TextEncoder,
    best_window,
    extend_over_marks,
    windows,
    word_shape,
    word_shapes,
)
from ner_batch.train import IGNORE, align_labels, build_examples, split_at_words

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> TextEncoder:
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(path)
    return TextEncoder(path / "tokenizer.json")


def subtokens(encoder: TextEncoder, text: str) -> list[str]:
    return [encoder.tokenizer.id_to_token(i) for i in encoder.encode(text).ids]


def words_of(text: str, encoded) -> list[str]:
    """The text of each word: from its first sub-token's start to its last sub-token's end."""
    last = np.ones(len(encoded), dtype=bool)
    last[:-1] = encoded.first[1:]
    starts, ends = encoded.starts[encoded.first], encoded.ends[last]
    return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def label_names(labels: np.ndarray) -> list[str | None]:
    return [None if i == IGNORE else LABELS[i] for i in labels.tolist()]


# --- word_shape ---


@pytest.mark.parametrize(
    ("word", "shape"),
    [
        ("paris", "lower"),
        ("école", "lower"),
        ("straße", "lower"),
        ("Paris", "title"),
        ("École", "title"),
        ("Ångström", "title"),
        ("A", "title"),  # a single capital letter is a title-case word, not an acronym
        ("É", "title"),
        ("PARIS", "upper"),
        ("ÉCOLE", "upper"),
        ("EU", "upper"),
        ("1990", "digit"),
        ("1990s", "digit"),  # any digit wins
        ("B52", "digit"),
        ("McDonald", "mixed"),
        ("iPhone", "mixed"),
        ("eBay", "mixed"),
        (".", "other"),
        ("--", "other"),
        ("€", "other"),
        ("", "other"),
    ],
)
def test_word_shape(word, shape):
    assert SHAPES[word_shape(word)] == shape


def test_word_shape_uncased_scripts_count_as_lower():
    # No capitalisation to bring back: the same class as lower-case words.
    assert SHAPES[word_shape("中文")] == "lower"


# --- TextEncoder ---


def test_special_tokens(encoder):
    vocab = encoder.tokenizer.get_vocab()
    assert encoder.prefix_ids == [vocab["[CLS]"]]
    assert encoder.suffix_ids == [vocab["[SEP]"]]
    assert encoder.n_special == 2
    assert encoder.pad_id == vocab["[PAD]"]


def test_no_special_tokens(tmp_path):
    from tokenizers import Tokenizer

    build_tokenizer(tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tokenizer.post_processor = None
    encoder = TextEncoder(tokenizer)
    assert (encoder.prefix_ids, encoder.suffix_ids, encoder.n_special) == ([], [], 0)


def test_encode_offsets_words_and_shapes(encoder):
    text = "John visited PARIS in 1990, McDonald  École blackburns."
    encoded = encoder.encode(text)
    assert subtokens(encoder, text) == [
        "john",
        "visited",
        "paris",
        "in",
        "1", "##9", "##9", "##0",
        ",",
        "m", "##c", "##d", "##on", "##a", "##l", "##d",
        "e", "##c", "##o", "##l", "##e",
        "blackburn", "##s",
        ".",
    ]  # fmt: skip
    # Offsets point into the original text (cased, accented), not the normalised one.
    pieces = [text[s:e] for s, e in zip(encoded.starts, encoded.ends, strict=True)]
    assert pieces == [
        "John",
        "visited",
        "PARIS",
        "in",
        "1", "9", "9", "0",
        ",",
        "M", "c", "D", "on", "a", "l", "d",
        "É", "c", "o", "l", "e",
        "blackburn", "s",
        ".",
    ]  # fmt: skip
    assert encoded.word_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 5, *[6] * 7, *[7] * 5, 8, 8, 9]
    assert encoded.n_words == 10
    assert encoded.first.tolist() == [
        True, True, True, True,
        True, False, False, False,
        True,
        True, False, False, False, False, False, False,
        True, False, False, False, False,
        True, False,
        True,
    ]  # fmt: skip
    shapes = [SHAPES[t] for t in encoded.type_ids.tolist()]
    # Every sub-token carries its word's shape.
    assert shapes == [
        "title", "lower", "upper", "lower",
        *["digit"] * 4,
        "other",
        *["mixed"] * 7,
        *["title"] * 5,
        "lower", "lower",
        "other",
    ]  # fmt: skip
    for array in (encoded.ids, encoded.type_ids, encoded.starts, encoded.ends, encoded.word_ids):
        assert array.dtype == np.int64
        assert array.shape == (len(encoded),)
    assert encoded.first.dtype == bool


def test_encode_splits_punctuation_into_words(encoder):
    text = "U.S. O'Neil"
    encoded = encoder.encode(text)
    assert words_of(text, encoded) == ["U", ".", "S", ".", "O", "'", "Neil"]
    assert [SHAPES[t] for t in encoded.type_ids[encoded.first]] == [
        "title",
        "other",
        "title",
        "other",
        "title",
        "other",
        "title",
    ]


def test_word_shapes_off(tmp_path):
    build_tokenizer(tmp_path)
    encoder = TextEncoder(str(tmp_path / "tokenizer.json"), word_shapes=False)
    assert encoder.encode("John PARIS 1990").type_ids.tolist() == [0] * 6


def test_encode_batch_and_empty_text(encoder):
    texts = ["John", "", "   ", "paris london"]
    batch = encoder.encode_batch(texts)
    assert [len(e) for e in batch] == [1, 0, 0, 2]
    assert [e.n_words for e in batch] == [1, 0, 0, 2]
    assert batch[3].ids.tolist() == encoder.encode("paris london").ids.tolist()


def test_extend_over_marks():
    text = "Cafe\u0301 noir"  # "e" + COMBINING ACUTE ACCENT
    assert extend_over_marks(text, 4) == 5
    assert extend_over_marks(text, 3) == 3
    assert extend_over_marks(text, len(text)) == len(text)


# --- windows and best_window ---


def test_windows_single_when_short():
    assert windows(0, 8, 2) == [(0, 0)]
    assert windows(5, 8, 2) == [(0, 5)]
    assert windows(8, 8, 2) == [(0, 8)]


def test_windows_examples():
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    # The last window is aligned to the end and may overlap its neighbour by more than `stride`.
    assert windows(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert windows(9, 4, 0) == [(0, 4), (4, 8), (5, 9)]
    assert windows(7, 4, 1) == [(0, 4), (3, 7)]


@pytest.mark.parametrize("stride", [-1, 8, 9])
def test_windows_bad_stride(stride):
    for n in (3, 100):  # short texts too: a bad setting fails on the first text
        with pytest.raises(
            ValueError, match=f"stride must be >= 0 and < window size 8, got {stride}"
        ):
            windows(n, 8, stride)


def window_cases():
    for size in range(1, 9):
        for stride in range(size):
            for n in range(0, 4 * size + 3):
                yield n, size, stride


def test_windows_cover_every_subtoken_and_overlap_by_stride():
    for n, size, stride in window_cases():
        spans = windows(n, size, stride)
        case = (n, size, stride, spans)
        assert spans[0][0] == 0 and spans[-1][1] == n, case
        assert all(0 < end - start <= size for start, end in spans) or n == 0, case
        if n <= size:
            assert spans == [(0, n)], case
            continue
        assert all(end - start == size for start, end in spans), case
        covered = np.zeros(n, dtype=int)
        for start, end in spans:
            covered[start:end] += 1
        assert (covered >= 1).all(), case
        starts = [start for start, _ in spans]
        assert starts == sorted(set(starts)), case  # no duplicate window
        overlaps = [end - start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)]
        assert all(o == stride for o in overlaps[:-1]), case
        assert stride <= overlaps[-1] < size, case


def brute_force_owner(n: int, spans: list[tuple[int, int]]) -> list[int]:
    """For each position, the first window among those that maximise min(left, right) context."""
    owners = []
    for i in range(n):
        context = {
            w: min(i - start, end - 1 - i)
            for w, (start, end) in enumerate(spans)
            if start <= i < end
        }
        most = max(context.values())
        owners.append(min(w for w, c in context.items() if c == most))
    return owners


def test_best_window_matches_brute_force():
    for n, size, stride in window_cases():
        spans = windows(n, size, stride)
        owner = best_window(n, spans)
        assert owner.dtype == np.int64 and owner.shape == (n,)
        assert owner.tolist() == brute_force_owner(n, spans), (n, size, stride)


def test_best_window_example():
    # Windows (0, 6) and (3, 9) overlap on 3, 4, 5. Context min(left, right) of 3: 2 in the
    # first window, 0 in the second; of 4: 1 and 1 (a tie: the first); of 5: 0 and 2.
    assert best_window(9, [(0, 6), (3, 9)]).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert best_window(5, [(0, 5)]).tolist() == [0] * 5
    assert best_window(0, [(0, 0)]).tolist() == []


# --- training labels: token_offsets, align_labels, build_examples ---


def test_token_offsets():
    text, starts, ends = token_offsets(["John", "O'Neil", "."])
    assert text == "John O'Neil ."
    assert starts.tolist() == [0, 5, 12]
    assert ends.tolist() == [4, 11, 13]
    assert [text[s:e] for s, e in zip(starts, ends, strict=True)] == ["John", "O'Neil", "."]
    text, starts, ends = token_offsets([])
    assert (text, starts.tolist(), ends.tolist()) == ("", [], [])


def aligned(encoder, tokens, tags, label_all_subtokens=False):
    text, starts, _ = token_offsets(tokens)
    encoded = encoder.encode(text)
    labels = align_labels(encoded, starts, tags, LABEL2ID, label_all_subtokens)
    assert labels.dtype == np.int64 and labels.shape == (len(encoded),)
    return list(zip(subtokens(encoder, text), label_names(labels), strict=True))


def test_align_labels_first_subtoken_of_each_word(encoder):
    tokens = ["Pierre", "Blackburns", "visited", "1990", "London"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC"]
    assert aligned(encoder, tokens, tags) == [
        ("p", "B-PER"), ("##i", None), ("##er", None), ("##r", None), ("##e", None),
        ("blackburn", "I-PER"), ("##s", None),
        ("visited", "O"),
        ("1", "O"), ("##9", None), ("##9", None), ("##0", None),
        ("london", "B-LOC"),
    ]  # fmt: skip


def test_align_labels_all_subtokens(encoder):
    tokens = ["Pierre", "Blackburns", "visited", "1990", "London"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC"]
    assert aligned(encoder, tokens, tags, label_all_subtokens=True) == [
        ("p", "B-PER"), ("##i", "I-PER"), ("##er", "I-PER"), ("##r", "I-PER"), ("##e", "I-PER"),
        ("blackburn", "I-PER"), ("##s", "I-PER"),
        ("visited", "O"),
        ("1", "O"), ("##9", "O"), ("##9", "O"), ("##0", "O"),
        ("london", "B-LOC"),
    ]  # fmt: skip


def test_align_labels_token_of_several_words(encoder):
    # One gold token, several pre-tokenizer words: B- on its first word, I- on the later ones.
    tokens = ["U.S.", "envoy", "O'Neil", "said"]
    tags = ["B-LOC", "O", "B-PER", "O"]
    text, starts, _ = token_offsets(tokens)
    encoded = encoder.encode(text)
    labels = label_names(align_labels(encoded, starts, tags, LABEL2ID))
    word_labels = [lab for lab, first in zip(labels, encoded.first, strict=True) if first]
    assert list(zip(words_of(text, encoded), word_labels, strict=True)) == [
        ("U", "B-LOC"), (".", "I-LOC"), ("S", "I-LOC"), (".", "I-LOC"),
        ("envoy", "O"),
        ("O", "B-PER"), ("'", "I-PER"), ("Neil", "I-PER"),
        ("said", "O"),
    ]  # fmt: skip
    # Exactly one labelled sub-token per word.
    assert sum(lab is not None for lab in labels) == encoded.n_words


def test_align_labels_empty(encoder):
    labels = align_labels(encoder.encode(""), np.zeros(0, dtype=np.int64), [], LABEL2ID)
    assert labels.shape == (0,)


def sentence(words: str, tags: str) -> Sentence:
    return Sentence(words.split(), tags.split())


def test_build_examples_short_sentence(encoder):
    s = sentence("John visited Paris", "B-PER O B-LOC")
    examples, n_split = build_examples([s], encoder, LABEL2ID, max_length=16)
    assert n_split == 0
    (example,) = examples
    cls, sep = encoder.prefix_ids[0], encoder.suffix_ids[0]
    assert example["input_ids"][0] == cls and example["input_ids"][-1] == sep
    assert example["input_ids"][1:-1] == encoder.encode("John visited Paris").ids.tolist()
    assert example["labels"] == [IGNORE, 3, 0, 1, IGNORE]
    assert example["token_type_ids"] == [0, 1, 0, 1, 0]  # title, lower, title
    assert example["attention_mask"] == [1] * 5


def test_build_examples_splits_long_sentence_at_word_boundaries(encoder):
    # 12 words, 17 sub-tokens; a window of 8 - 2 special tokens = 6 sub-tokens.
    s = sentence(
        "Pierre Blackburns visited London and Paris with Mary Smith on Thursday .",
        "B-PER I-PER O B-LOC O B-LOC O B-PER I-PER O O O",
    )
    text, _, _ = token_offsets(s.tokens)
    full = encoder.encode(text)
    examples, n_split = build_examples([s, sentence("Mary", "B-PER")], encoder, LABEL2ID, 8)
    assert n_split == 1
    assert len(examples) > 2
    pieces, short = examples[:-1], examples[-1]
    assert short["labels"] == [IGNORE, LABEL2ID["B-PER"], IGNORE]
    # Nothing truncated: the pieces put back together are the whole sentence.
    inner = [p["input_ids"][1:-1] for p in pieces]
    assert [i for ids in inner for i in ids] == full.ids.tolist()
    labels = [lab for p in pieces for lab in p["labels"][1:-1]]
    # One label per word, in order: the gold tags.
    assert [LABELS[lab] for lab in labels if lab != IGNORE] == s.tags
    offset = 0
    for p in pieces:
        n = len(p["input_ids"])
        assert n <= 8
        assert len(p["labels"]) == len(p["token_type_ids"]) == len(p["attention_mask"]) == n
        assert p["input_ids"][0] == encoder.prefix_ids[0]
        assert p["input_ids"][-1] == encoder.suffix_ids[0]
        assert full.first[offset], "a piece starts inside a word"
        assert p["labels"][1] != IGNORE
        offset += n - 2
    assert offset == len(full)


def test_build_examples_max_length_too_small(encoder):
    with pytest.raises(NerbatchError, match="max_length 2 leaves no room"):
        build_examples([sentence("John", "B-PER")], encoder, LABEL2ID, 2)


def test_build_examples_unknown_tag(encoder):
    s = Sentence(["Acme"], ["B-ORG"], line=7)
    with pytest.raises(NerbatchError, match=r"line 7: tags \['B-ORG'\] are not in the label set"):
        build_examples([s], encoder, LABEL2ID, 16)


def test_split_at_words(encoder):
    # p ##i ##er ##r ##e | visited | london | and | 1 ##9 ##9 ##0
    encoded = encoder.encode("Pierre visited London and 1990")
    assert len(encoded) == 12
    assert split_at_words(encoded, 20) == [(0, 12)]
    assert split_at_words(encoded, 6) == [(0, 6), (6, 12)]
    # A window of 10 would cut "1990" (sub-tokens 8-11): back up to its first sub-token.
    assert split_at_words(encoded, 10) == [(0, 8), (8, 12)]
    # A word longer than the window is cut inside it (rather than looping forever); the next
    # piece still ends at a word boundary where it can.
    assert split_at_words(encoded, 3) == [(0, 3), (3, 6), (6, 8), (8, 11), (11, 12)]
    with pytest.raises(ValueError, match="window must be at least 1"):
        split_at_words(encoded, 0)


def test_split_at_words_covers_everything(encoder):
    encoded = encoder.encode("Pierre Blackburns visited London , 1990 and McDonald said")
    for window in range(1, len(encoded) + 2):
        pieces = split_at_words(encoded, window)
        assert pieces[0][0] == 0 and pieces[-1][1] == len(encoded)
        for (_, end), (start, _) in zip(pieces, pieces[1:], strict=False):
            assert end == start
        assert all(0 < end - start <= window for start, end in pieces)


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None)
def test_vectorised_word_shapes_equal_the_reference(words):
    """`word_shapes` (array operations over the joined text) == `word_shape` per word."""
    text = " ".join(words)
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    starts = np.array(starts)
    ends = starts + np.array([len(w) for w in words])
    assert word_shapes(text, starts, ends).tolist() == [word_shape(w) for w in words]


@pytest.mark.parametrize("piece_chars", [50, 997, 4096])
def test_long_texts_encoded_in_pieces_equal_the_whole(tmp_path, piece_chars):
    """A text longer than `piece_chars` is tokenised in whitespace-cut pieces (to bound memory
    on huge documents); the result is the same as encoding it at once."""
    import random

    build_tokenizer(tmp_path)
    encoder = TextEncoder(tmp_path / "tokenizer.json")
    rng = random.Random(piece_chars)
    words = ["John", "smith", "visited", "PARIS", "2024", "and\n", "met", "Mary", "U.S.", "\n\n"]
    text = " ".join(rng.choice(words) for _ in range(3000))
    whole = encoder.encode(text)
    encoder.piece_chars = piece_chars
    pieces = encoder.encode(text)
    for field in ("ids", "type_ids", "starts", "ends", "word_ids", "first", "newlines"):
        assert np.array_equal(getattr(whole, field), getattr(pieces, field)), field
