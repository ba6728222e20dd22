"""Sub-token logits -> word labels -> entity spans with character offsets.

Backend-agnostic: a `LogitsFn` maps padded (batch, seq) int64 arrays to (batch, seq, labels)
logits, whether ONNX Runtime (annotate) or PyTorch (scoring a checkpoint) computes them. Texts
longer than the window are cut into overlapping windows; each sub-token takes its prediction from
the window where it has the most context. Nothing is truncated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .choices import SEGMENTS
from .conll import model_label
from .features import Encoded, TextEncoder, best_window, extend_over_marks, windows

# (input_ids, attention_mask, token_type_ids), each (batch, seq) int64 -> (batch, seq, labels)
LogitsFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Span:
    start: int
    end: int
    label: str
    score: float


@dataclass
class Prediction:
    """Per word of one text: label id and its probability, plus the word character offsets."""

    labels: np.ndarray  # (n_words,) int64
    probs: np.ndarray  # (n_words,) float32
    word_starts: np.ndarray  # (n_words,) int64
    word_ends: np.ndarray  # (n_words,) int64
    opens_segment: np.ndarray | None = None  # (n_words,) bool: no entity continues into it


class LabelSet:
    """A model's labels in id order, with the arrays decoding needs, in any scheme: IOB1/IOB2
    (B- opens), BIOES/BILOU (S-/U- is a one-word entity, E-/L- closes one) or prefix-less IO."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        parsed = [model_label(label) for label in self.labels]
        self.types = sorted({t for _, t in parsed if t})
        index = {t: i for i, t in enumerate(self.types)}
        self.type_of = np.array([index[t] if t else -1 for _, t in parsed], dtype=np.int64)
        self.is_begin = np.array([r in ("begin", "single") for r, _ in parsed], dtype=bool)
        self.closes = np.array([r in ("end", "single") for r, _ in parsed], dtype=bool)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=-1, keepdims=True)


def default_stride(max_length: int) -> int:
    """Window overlap when none is given: a quarter of the window."""
    return max_length // 4


@dataclass(frozen=True)
class TaggerOptions:
    """How a Tagger batches and segments: the one set of defaults for annotate, score and export.

    `batch_size` windows per batch, also capped at `max_batch_tokens` padded positions (measured:
    32 beats 8 and 128 for int8 MiniLM on 2 cores); `segment` is a key of `choices.SEGMENTS`;
    `streams` > 1 runs that many batches at once from a thread pool (the LogitsFn must then be
    thread-safe, as an ONNX Runtime session is); 0 lets Bundle.tagger choose the runtime's best
    (1 on ONNX Runtime, OpenVINO's optimal number of requests), and is 1 anywhere else."""

    batch_size: int = 32
    max_batch_tokens: int = 4096
    segment: str = "lines"
    streams: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if self.segment not in SEGMENTS:
            raise ValueError(
                f"unknown segment mode {self.segment!r}; expected one of {list(SEGMENTS)}"
            )
        for name in ("batch_size", "max_batch_tokens", "streams"):
            low = 0 if name == "streams" else 1
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")


def check_window(max_length: int, stride: int, n_special: int) -> None:
    """Raise ValueError unless windows of `max_length` sub-tokens (`n_special` of them the
    tokenizer's specials) overlapping by `stride` leave room to tag."""
    window = max_length - n_special
    if window < 8:
        raise ValueError(f"max_length {max_length} leaves fewer than 8 sub-tokens per window")
    if not 0 <= stride < window:
        raise ValueError(
            f"stride {stride} must be >= 0 and smaller than the window ({window} "
            f"sub-tokens at max_length {max_length})"
        )


class Tagger:
    """Runs a LogitsFn over encoded texts in length-sorted, dynamically padded batches."""

    def __init__(
        self,
        encoder: TextEncoder,
        labels: Sequence[str],
        logits_fn: LogitsFn,
        max_length: int = 128,
        stride: int = 32,
        options: TaggerOptions | None = None,
    ):
        """Windows of `max_length` sub-tokens (specials included) overlapping by `stride`."""
        options = options or TaggerOptions()
        options.check()
        self.options = options
        self.min_newlines = SEGMENTS[options.segment]
        self.encoder = encoder
        self.labels = LabelSet(labels)
        self.logits_fn = logits_fn
        check_window(max_length, stride, encoder.n_special)
        self.window = max_length - encoder.n_special
        self.stride = stride
        self.batch_size = options.batch_size
        self.max_batch_tokens = options.max_batch_tokens
        self.streams = options.streams or 1
        self._pool = None
        # Which runtime computes the logits and why (set by Bundle.tagger; see probe.py).
        self.runtime: dict = {"runtime": "custom", "reason": "a LogitsFn given directly"}

    def predict(self, encoded: Sequence[Encoded]) -> list[Prediction]:
        """Word-level predictions for each encoded text, in input order."""
        # Every window of every text: (text index, start, end), plus who owns each sub-token.
        jobs: list[tuple[int, int, int]] = []
        owners: list[np.ndarray] = []
        window_base: list[int] = []
        for t, enc in enumerate(encoded):
            spans = self._windows(enc)
            window_base.append(len(jobs))
            owners.append(best_window(len(enc), spans))
            jobs.extend((t, s, e) for s, e in spans)
        label_of = [np.zeros(len(e), dtype=np.int64) for e in encoded]
        prob_of = [np.zeros(len(e), dtype=np.float32) for e in encoded]

        order = sorted(range(len(jobs)), key=lambda j: jobs[j][2] - jobs[j][1])
        batches = list(self._batches(order, jobs))

        def run(batch: list[int]) -> np.ndarray:
            return self._run(batch, jobs, encoded)  # (batch, seq, labels)

        for batch, logits in zip(batches, self._map(run, batches), strict=True):
            probs = softmax(logits)
            best = probs.argmax(-1)
            best_prob = np.take_along_axis(probs, best[..., None], -1)[..., 0]
            offset = len(self.encoder.prefix_ids)
            for row, j in enumerate(batch):
                t, start, end = jobs[j]
                mine = owners[t][start:end] == (j - window_base[t])
                positions = np.arange(start, end)[mine]
                label_of[t][positions] = best[row, offset + positions - start]
                prob_of[t][positions] = best_prob[row, offset + positions - start]

        predictions = []
        for enc, labels, probs in zip(encoded, label_of, prob_of, strict=True):
            first = enc.first
            last = np.ones(len(enc), dtype=bool)
            last[:-1] = first[1:]
            opens_segment = None
            if self.min_newlines and enc.newlines is not None:
                opens_segment = enc.newlines[first] >= self.min_newlines
            predictions.append(
                Prediction(
                    labels[first], probs[first], enc.starts[first], enc.ends[last], opens_segment
                )
            )
        return predictions

    def _map(self, run: Callable, batches: list[list[int]]):
        """Logits of each batch in order: one after the other, or `streams` at a time."""
        if self.streams == 1 or len(batches) < 2:
            return map(run, batches)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="nerbatch-stream")
        return self._pool.map(run, batches)

    def _windows(self, enc: Encoded) -> list[tuple[int, int]]:
        """Overlapping windows within each segment of the text (segments never share one)."""
        bounds = [0, len(enc)]
        if self.min_newlines and enc.newlines is not None and len(enc):
            breaks = np.flatnonzero(enc.newlines >= self.min_newlines)
            bounds = [0, *breaks[breaks > 0].tolist(), len(enc)]
        return [
            (start + s, start + e)
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
            for s, e in windows(end - start, self.window, self.stride)
        ]

    def _batches(self, order: list[int], jobs: list[tuple[int, int, int]]):
        batch: list[int] = []
        longest = 0
        for j in order:
            length = jobs[j][2] - jobs[j][1] + self.encoder.n_special
            if batch and (
                len(batch) >= self.batch_size
                or max(longest, length) * (len(batch) + 1) > self.max_batch_tokens
            ):
                yield batch
                batch, longest = [], 0
            batch.append(j)
            longest = max(longest, length)
        if batch:
            yield batch

    def _run(self, batch: list[int], jobs, encoded: Sequence[Encoded]) -> np.ndarray:
        prefix = np.asarray(self.encoder.prefix_ids, dtype=np.int64)
        suffix = np.asarray(self.encoder.suffix_ids, dtype=np.int64)
        seq = max(jobs[j][2] - jobs[j][1] for j in batch) + self.encoder.n_special
        ids = np.full((len(batch), seq), self.encoder.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), seq), dtype=np.int64)
        types = np.zeros((len(batch), seq), dtype=np.int64)
        for row, j in enumerate(batch):
            t, start, end = jobs[j]
            enc = encoded[t]
            row_ids = np.concatenate([prefix, enc.ids[start:end], suffix])
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
            types[row, len(prefix) : len(prefix) + end - start] = enc.type_ids[start:end]
        return self.logits_fn(ids, mask, types)

    def spans(self, text: str, prediction: Prediction) -> list[Span]:
        """Entity spans of one text, with BIO repair: an I- after O or after another type
        opens a new entity. `text[span.start:span.end]` is the span's surface text."""
        kind = self.labels.type_of[prediction.labels]  # (n_words,) -1 for O
        if not len(kind):
            return []
        previous = np.concatenate([[-1], kind[:-1]])
        # (n_words,) whether the word before closed its entity (an E- or S- in BIOES)
        after_close = np.concatenate([[False], self.labels.closes[prediction.labels][:-1]])
        opens = (kind >= 0) & (
            self.labels.is_begin[prediction.labels] | (previous != kind) | after_close
        )
        if prediction.opens_segment is not None:
            opens |= (kind >= 0) & prediction.opens_segment  # entities never cross segments
        chunk = np.cumsum(opens) - 1
        inside = kind >= 0
        first_word = np.flatnonzero(opens)
        n_chunks = len(first_word)
        if not n_chunks:
            return []
        last_word = np.zeros(n_chunks, dtype=np.int64)
        np.maximum.at(last_word, chunk[inside], np.flatnonzero(inside))
        total = np.bincount(chunk[inside], weights=prediction.probs[inside], minlength=n_chunks)
        count = np.bincount(chunk[inside], minlength=n_chunks)
        starts = prediction.word_starts[first_word].tolist()
        ends = prediction.word_ends[last_word].tolist()
        types = kind[first_word].tolist()
        scores = (total / count).tolist()
        spans = []
        for s, e, k, p in zip(starts, ends, types, scores, strict=True):
            # A combining mark belongs to the character before it. The tokenizer drops marks from
            # offsets (so extend the end over them), and splits a spacing mark after CJK or
            # punctuation into a word of its own (so a span may start on one: move past it, and
            # drop a span made only of marks). Spans then never cut a grapheme nor overlap.
            s, e = extend_over_marks(text, s), extend_over_marks(text, e)
            # Spaces are never part of a span: a mark-only first word may precede one, and
            # byte-level BPE and SentencePiece pieces ("Ġ", "▁") carry the space before a word.
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            if s < e:
                spans.append(Span(s, e, self.labels.types[k], float(p)))
        return spans

    def tag(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans for each text. The caller bounds how many texts it passes at once."""
        encoded = self.encoder.encode_batch(texts)
        return [self.spans(t, p) for t, p in zip(texts, self.predict(encoded), strict=True)]


def token_tags(
    token_starts: Sequence[int], token_ends: Sequence[int], spans: Sequence[Span]
) -> list[str]:
    """IOB2 tags of pre-split tokens (character ranges in the same text) from entity spans: the
    first token a span overlaps gets B-, the others I-; a token keeps the first span it meets."""
    tags = ["O"] * len(token_starts)
    starts = np.asarray(token_starts)
    ends = np.asarray(token_ends)
    for span in sorted(spans, key=lambda s: s.start):
        hit = np.flatnonzero((starts < span.end) & (ends > span.start))
        hit = [i for i in hit.tolist() if tags[i] == "O"]
        for k, i in enumerate(hit):
            tags[i] = ("B-" if k == 0 else "I-") + span.label
    return tags
