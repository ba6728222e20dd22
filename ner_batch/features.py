"""From raw text to model inputs and back, with `tokenizers` only (no torch): shared by training,
scoring and annotation so that every stage sees text exactly the same way.

A *word* is one pre-tokenizer piece (for BERT: a run of letters/digits, or one punctuation mark),
so `U.S.` is four words and `Obama,` two. Training labels the first sub-token of each word with
the tag of the gold token it falls in (B- only on the token's first word), so spans never swallow
trailing punctuation in raw text. Each sub-token's token-type id is the *shape* of its word
(lowercase, Titlecase, ALLCAPS, digit, mixed, other): uncased vocabularies drop capitalisation,
and the token-type embedding brings it back at no inference cost.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SHAPES = ("lower", "title", "upper", "digit", "mixed", "other")


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

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_words(self) -> int:
        return int(self.word_ids[-1]) + 1 if len(self.word_ids) else 0


class TextEncoder:
    """Wraps a `tokenizers.Tokenizer`: text -> Encoded, and the special tokens around a window."""

    def __init__(self, tokenizer: Tokenizer | str | Path, word_shapes: bool = True):
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_file(str(tokenizer))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.word_shapes = word_shapes
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

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self._to_encoded(text, e) for text, e in zip(texts, encodings, strict=True)]

    def encode(self, text: str) -> Encoded:
        return self.encode_batch([text])[0]

    def _to_encoded(self, text: str, encoding) -> Encoded:
        n = len(encoding.ids)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(n, 2)
        word_ids = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
        # Renumber words densely (the pre-tokenizer may yield pieces that produce no token).
        first = np.ones(n, dtype=bool)
        if n:
            first[1:] = word_ids[1:] != word_ids[:-1]
        dense = np.cumsum(first) - 1
        type_ids = np.zeros(n, dtype=np.int64)
        if self.word_shapes and n:
            word_start = offsets[first, 0]
            # A word ends where its last sub-token ends.
            last = np.ones(n, dtype=bool)
            last[:-1] = first[1:]
            word_end = offsets[last, 1]
            shapes = np.fromiter(
                (
                    word_shape(text[s:e])
                    for s, e in zip(word_start.tolist(), word_end.tolist(), strict=True)
                ),
                dtype=np.int64,
                count=len(word_start),
            )
            type_ids = shapes[dense]
        return Encoded(ids, type_ids, offsets[:, 0].copy(), offsets[:, 1].copy(), dense, first)


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
