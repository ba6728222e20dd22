"""From raw text to model inputs and back, with `tokenizers` only (no torch): shared by training,
scoring and annotation so that every stage sees text exactly the same way.

A *word* is one pre-tokenizer piece (for BERT: a run of letters/digits, or one punctuation mark),
so `U.S.` is four words and `Obama,` two. Training labels the first sub-token of each word with
the tag of the gold token it falls in (B- only on the token's first word), so spans never swallow
trailing punctuation in raw text. Each sub-token's token-type id is the *shape* of its word
(lowercase, Titlecase, ALLCAPS, digit, mixed, other): uncased vocabularies drop capitalisation,
and the token-type embedding brings it back at no inference cost. Models trained elsewhere get the
words they were trained on instead: the transformers pipeline's where the tokenizer marks
continuing pieces ("##"), whole whitespace-delimited runs where it does not (see TextEncoder).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SHAPES = ("lower", "title", "upper", "digit", "mixed", "other")
# What a word is (each labelled by its first sub-token): see TextEncoder.
WORD_RULES = ("pre-tokenizer", "pipeline")
# Every code point that str.isspace() (and so the `\s` of `re`) calls whitespace is below
# U+3001; the table's last entry stands for every code point above.
_SPACE_TABLE = np.array([chr(c).isspace() for c in range(0x3002)], dtype=bool)
_NON_SPACE = re.compile(r"\S")


def word_shape(word: str) -> int:
    """Index into SHAPES of a word's surface form."""
    if any(c.isdigit() for c in word):
        return 3
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 5
    cased = [c for c in letters if c.isupper() or c.islower()]
    if not cased or all(c.islower() for c in cased):
        return 0
    if all(c.isupper() for c in cased):
        return 2 if len(cased) > 1 else 1
    if cased[0].isupper() and all(c.islower() for c in cased[1:]):
        return 1
    return 4


@dataclass
class Encoded:
    """One text as sub-tokens, without special tokens. All arrays have shape (n_subtokens,)."""

    ids: np.ndarray  # int64 vocabulary ids
    type_ids: np.ndarray  # int64 word-shape class (or 0 when shapes are off)
    starts: np.ndarray  # int64 character offset of each sub-token in the text
    ends: np.ndarray  # int64
    word_ids: np.ndarray  # int64 index of the word each sub-token belongs to
    first: np.ndarray  # bool: sub-token is the first of its word
    # int64 line breaks between the previous sub-token and this one (0 for the first)
    newlines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_words(self) -> int:
        return int(self.word_ids[-1]) + 1 if len(self.word_ids) else 0


class TextEncoder:
    """Wraps a `tokenizers.Tokenizer`: text -> Encoded, and the special tokens around a window."""

    def __init__(
        self,
        tokenizer: Tokenizer | str | Path,
        word_shapes: bool = True,
        word_rule: str = "pre-tokenizer",
    ):
        """`word_rule` (WORD_RULES) says what a word is: "pre-tokenizer" pieces (what nerbatch
        trains on), or "pipeline", for models trained elsewhere: the words of the transformers
        token-classification pipeline where the tokenizer marks continuing pieces ("##",
        `_pipeline_words`), whole whitespace-delimited runs where it does not (`_whole_words`)."""
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_file(str(tokenizer))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if word_rule not in WORD_RULES:
            raise ValueError(f"unknown word rule {word_rule!r}; expected one of {WORD_RULES}")
        self.tokenizer = tokenizer
        self.word_shapes = word_shapes
        self.word_rule = word_rule
        model = tokenizer.model
        # WordPiece ("##") and some BPE models mark word-continuing pieces; others do not.
        self.subword_prefix = getattr(model, "continuing_subword_prefix", None) or None
        unk = getattr(model, "unk_token", None)
        self.unk_id = tokenizer.token_to_id(unk) if isinstance(unk, str) else None
        if self.unk_id is None:
            self.unk_id = next(
                (i for t in ("[UNK]", "<unk>") if (i := tokenizer.token_to_id(t)) is not None),
                None,
            )
        # Special tokens: whatever the post-processor puts before and after a one-token text.
        with_special = tokenizer.encode("a", add_special_tokens=True).ids
        plain = tokenizer.encode("a", add_special_tokens=False).ids
        at = with_special.index(plain[0]) if plain and plain[0] in with_special else 0
        self.prefix_ids = with_special[:at]
        self.suffix_ids = with_special[at + len(plain) :]
        self.n_special = len(self.prefix_ids) + len(self.suffix_ids)
        pad = tokenizer.token_to_id("[PAD]")
        if pad is None:
            pad = tokenizer.token_to_id("<pad>")
        self.pad_id = int(pad or 0)

    # Texts longer than this are tokenised in pieces cut at whitespace: the tokenizer's Python
    # results (lists of ints and offset tuples) cost ~100 bytes per token, too much for a 50 MB
    # document at once. A BERT pre-tokenizer splits at whitespace anyway, so nothing changes.
    piece_chars = 1_000_000

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        if any(len(t) > self.piece_chars for t in texts):
            return [
                self._encode_long(t) if len(t) > self.piece_chars else self.encode_batch([t])[0]
                for t in texts
            ]
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        encoded = [self._to_encoded(e) for e in encodings]
        if self.word_rule == "pipeline":
            for text, enc, encoding in zip(texts, encoded, encodings, strict=True):
                if self.subword_prefix:
                    self._pipeline_words(enc, encoding.tokens)
                else:
                    self._whole_words(text, enc)
        self._add_text_features(texts, encoded)
        return encoded

    def _encode_long(self, text: str) -> Encoded:
        cuts = [0]
        while len(text) - cuts[-1] > self.piece_chars:
            end = cuts[-1] + self.piece_chars
            space = max(text.rfind(" ", cuts[-1], end), text.rfind("\n", cuts[-1], end))
            cuts.append(space + 1 if space > cuts[-1] else end)
        cuts.append(len(text))
        parts = []
        words = 0
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            part = self.encode_batch([text[start:end]])[0]
            n_words = part.n_words
            part.starts += start
            part.ends += start
            part.word_ids += words
            words += n_words
            parts.append(part)
        joined = Encoded(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("ids", "type_ids", "starts", "ends", "word_ids", "first", "newlines")
            )
        )
        # Line breaks across a cut: count them in the whole text where a piece begins (from the
        # end of the text before it to its first non-space, as _add_text_features does).
        offsets = np.cumsum([0] + [len(p) for p in parts])[1:-1]
        for at in offsets.tolist():
            if at and at < len(joined):
                begins = [_content_start(text, int(joined.starts[i])) for i in (at - 1, at)]
                gap = text[max(int(joined.ends[at - 1]), begins[0]) : begins[1]]
                joined.newlines[at] = gap.count("\n")
        return joined

    @property
    def whole_words(self) -> bool:
        """Words are whitespace runs (`_whole_words`): a model trained elsewhere whose
        tokenizer has no continuing-subword prefix."""
        return self.word_rule == "pipeline" and not self.subword_prefix

    def encode(self, text: str) -> Encoded:
        return self.encode_batch([text])[0]

    @staticmethod
    def _to_encoded(encoding) -> Encoded:
        n = len(encoding.ids)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(n, 2)
        raw_words = encoding.word_ids
        try:  # no special tokens are added, so no None: one C loop, not a Python one
            word_ids = np.asarray(raw_words, dtype=np.int64)
        except TypeError:
            word_ids = np.asarray([-1 if w is None else w for w in raw_words], dtype=np.int64)
        # Renumber words densely (the pre-tokenizer may yield pieces that produce no token).
        first = np.ones(n, dtype=bool)
        if n:
            first[1:] = word_ids[1:] != word_ids[:-1]
        dense = np.cumsum(first) - 1
        type_ids = np.zeros(n, dtype=np.int64)
        return Encoded(ids, type_ids, offsets[:, 0].copy(), offsets[:, 1].copy(), dense, first)

    def _pipeline_words(self, enc: Encoded, tokens: list[str]) -> None:
        """Regroup sub-tokens into the words of transformers' token-classification pipeline
        (`gather_pre_entities`) for a tokenizer with a continuing-subword prefix ("##"), so that
        spans of a model trained elsewhere equal the pipeline's: a piece whose string is longer
        than its text continues a word; [UNK] always starts one."""
        n = len(enc)
        if not n:
            return
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
        continues = lengths != enc.ends - enc.starts
        if self.unk_id is not None:
            continues &= enc.ids != self.unk_id
        continues[0] = False
        enc.first = ~continues
        enc.word_ids = np.cumsum(enc.first) - 1

    @staticmethod
    def _whole_words(text: str, enc: Encoded) -> None:
        """Regroup sub-tokens into whole words for a tokenizer without a continuing-subword
        prefix (SentencePiece/Unigram as in XLM-R and DeBERTa-v3, byte-level BPE as in RoBERTa):
        a word is a run of characters between whitespace (str.isspace), so no span starts or
        ends inside one.

        The pipeline's own rule for these tokenizers ("a piece continues a word unless U+0020 is
        just before or at its start") cuts words: a lone "▁" piece carries the offsets of the
        character after it, so in "CHINA IN" the pieces "▁", "I", "N" make the words "I" and
        "IN" and a span may end on "CHINA I"; a tab or a newline joins two words. Here each piece
        belongs to the word of the first non-space character at or after its start: a lone
        "▁", "Ġ" or "Ċ" piece (the whitespace before a word, or no text at all) belongs to the
        word that follows it, and its label is that word's (the first piece's). Pieces after the
        last word belong to the word before them. A piece that reaches into the next word joins
        the two (DeBERTa's one "<unk>" piece over "東京\u3000大阪": a piece cannot be split)."""
        n = len(enc)
        if not n:
            return
        space = _is_space(_codepoints(text))  # (n_chars,)
        next_content = _next_content(space)  # (n_chars + 1,)
        opens = ~space
        opens[1:] &= space[:-1]
        # (n_chars + 1,) index of the whitespace word at each non-space position; -1 past the last
        word_at = np.append(np.cumsum(opens) - 1, -1)
        word_starts = np.append(np.flatnonzero(opens), len(text))  # [-1]: past the last word
        words = word_at[next_content[enc.starts]]  # (n_subtokens,)
        reached = np.maximum.accumulate(enc.ends)  # (n_subtokens,) furthest end so far
        continues = np.zeros(n, dtype=bool)
        continues[1:] = (
            (words[1:] == words[:-1])
            | (words[1:] < 0)
            | (word_starts[words[1:]] < reached[:-1])  # an earlier piece reached into the word
        )
        enc.first = ~continues
        enc.word_ids = np.cumsum(enc.first) - 1

    def _add_text_features(self, texts: Sequence[str], encoded: list[Encoded]) -> None:
        """Word shapes and line breaks of every text, in one vectorised pass over the joined
        text (no per-word Python in the hot path)."""
        bases = np.zeros(len(texts), dtype=np.int64)
        bases[1:] = np.cumsum([len(t) for t in texts])[:-1]
        joined = "".join(texts)
        codepoints = _codepoints(joined)
        newlines_upto = np.zeros(len(codepoints) + 1, dtype=np.int64)
        np.cumsum(codepoints == 10, out=newlines_upto[1:])
        # A piece made only of whitespace (byte-level BPE's "Ċ" or lone "Ġ", DeBERTa's "▁" over a
        # newline) holds the line breaks before the text after it: count them from where the
        # previous piece's text ends to where this piece's text begins (its first non-space).
        next_content = _next_content(_is_space(codepoints))
        starts, ends, counts = [], [], []
        for base, text, enc in zip(bases.tolist(), texts, encoded, strict=True):
            enc.newlines = np.zeros(len(enc), dtype=np.int64)
            if len(enc) > 1:
                # (n_subtokens,) where each piece's text begins, within this text
                anchors = np.minimum(next_content[enc.starts + base], base + len(text))
                reached = np.maximum(enc.ends[:-1] + base, anchors[:-1])
                enc.newlines[1:] = np.maximum(
                    newlines_upto[anchors[1:]] - newlines_upto[reached], 0
                )
            if self.word_shapes:
                last = np.ones(len(enc), dtype=bool)
                last[:-1] = enc.first[1:]
                starts.append(enc.starts[enc.first] + base)
                ends.append(enc.ends[last] + base)  # a word ends where its last sub-token ends
                counts.append(len(starts[-1]))
        if not sum(counts):
            return
        shapes = word_shapes(joined, np.concatenate(starts), np.concatenate(ends), codepoints)
        for enc, word_shape_ids in zip(
            encoded, np.split(shapes, np.cumsum(counts)[:-1]), strict=True
        ):
            enc.type_ids[:] = word_shape_ids[enc.word_ids]


def _codepoints(text: str) -> np.ndarray:
    """(n_chars,) uint32 code points of a str (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _is_space(codepoints: np.ndarray) -> np.ndarray:
    """(n,) bool: which code points str.isspace() calls whitespace."""
    return _SPACE_TABLE[np.minimum(codepoints, len(_SPACE_TABLE) - 1)]


def _content_start(text: str, position: int) -> int:
    """The first non-space position of `text` at or after `position` (len(text) if none)."""
    match = _NON_SPACE.search(text, position)
    return match.start() if match else len(text)


def _next_content(space: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 for a (n,) whitespace mask: the first non-space position at or after each
    position, n where none is (and at n itself)."""
    n = len(space)
    positions = np.where(space, n, np.arange(n))
    return np.append(np.minimum.accumulate(positions[::-1])[::-1], n)


# Character classes of the Basic Multilingual Plane, as bit flags (1 digit, 2 letter, 4 upper,
# 8 lower), so that word shapes are computed with array operations, not per character.
_DIGIT, _ALPHA, _UPPER, _LOWER = 1, 2, 4, 8
_BMP_CLASSES: np.ndarray | None = None


def _char_classes(codepoints: np.ndarray) -> np.ndarray:
    global _BMP_CLASSES
    if _BMP_CLASSES is None:
        table = np.zeros(0x10000, dtype=np.uint8)
        for cp in range(0x10000):
            c = chr(cp)
            table[cp] = (
                _DIGIT * c.isdigit()
                + _ALPHA * c.isalpha()
                + _UPPER * c.isupper()
                + _LOWER * c.islower()
            )
        _BMP_CLASSES = table
    classes = _BMP_CLASSES[np.minimum(codepoints, 0xFFFF)]
    for i in np.flatnonzero(codepoints > 0xFFFF).tolist():  # rare: emoji, historic scripts
        c = chr(int(codepoints[i]))
        classes[i] = (
            _DIGIT * c.isdigit()
            + _ALPHA * c.isalpha()
            + _UPPER * c.isupper()
            + _LOWER * c.islower()
        )
    return classes


def word_shapes(
    text: str, starts: np.ndarray, ends: np.ndarray, codepoints: np.ndarray | None = None
) -> np.ndarray:
    """`word_shape(text[s:e])` for every (s, e), vectorised: (n_words,) int64. `codepoints`
    may pass the text's UTF-32 code points when the caller already has them."""
    if codepoints is None:
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = _char_classes(codepoints)
    n = len(codepoints)

    def count(flag: int) -> np.ndarray:
        running = np.zeros(n + 1, dtype=np.int64)
        np.cumsum((classes & flag) != 0, out=running[1:])
        return running[ends] - running[starts]

    digits, letters, upper, lower = (count(f) for f in (_DIGIT, _ALPHA, _UPPER, _LOWER))
    # Index of the first cased character at or after each position (n when there is none).
    cased = (classes & (_UPPER | _LOWER)) != 0
    positions = np.where(cased, np.arange(n), n)
    next_cased = np.append(np.minimum.accumulate(positions[::-1])[::-1], n)
    first_cased = next_cased[starts]
    first_is_upper = np.zeros(len(starts), dtype=bool)
    inside = first_cased < ends
    first_is_upper[inside] = (classes[first_cased[inside]] & _UPPER) != 0
    shapes = np.full(len(starts), 4, dtype=np.int64)  # mixed case unless a rule below applies
    shapes[(upper == 1) & first_is_upper] = 1  # Title (a single capital too)
    shapes[(upper > 1) & (lower == 0)] = 2  # ALLCAPS
    shapes[upper == 0] = 0  # lower, or letters without case
    shapes[letters == 0] = 5  # no letters
    shapes[digits > 0] = 3  # a digit anywhere
    return shapes


def extend_over_marks(text: str, end: int) -> int:
    """Move a span end past combining marks that belong to its last character (the tokenizer
    drops them from offsets), so `text[start:end]` never cuts a grapheme."""
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Overlapping [start, end) windows of at most `size` sub-tokens covering 0..n; consecutive
    windows share `stride` sub-tokens (the last one, aligned to the end, may share more). A text
    that fits gives one window. A bad stride is an error whatever `n` is, so that a bad setting
    fails on the first text rather than on the first long one."""
    if not 0 <= stride < size:
        raise ValueError(f"stride must be >= 0 and < window size {size}, got {stride}")
    if n <= size:
        return [(0, n)]
    step = size - stride
    starts = list(range(0, n - size, step)) + [n - size]
    return [(s, s + size) for s in starts]


def best_window(n: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each of n sub-tokens, the index of the window in which it has the most context on
    both sides: the window that maximises the smaller of its two distances to the window edges
    (the first such window on a tie)."""
    owner = np.zeros(n, dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)
    for w, (start, end) in enumerate(spans):
        positions = np.arange(start, end)
        context = np.minimum(positions - start, end - 1 - positions)
        better = context > best[start:end]
        best[start:end][better] = context[better]
        owner[start:end][better] = w
    return owner
