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

from .choices import DECODERS, SEGMENTS
from .conll import model_label
from .decode import decode_words, is_valid, transitions
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


@dataclass
class Prepared:
    """Texts' windows and batches, ready for `Tagger.infer` (see `Tagger.prepare`)."""

    encoded: Sequence[Encoded]
    jobs: list[tuple[int, int, int]]  # every window: (text index, start, end)
    batches: list[list[int]]  # job indices, length-sorted and bounded
    owner: np.ndarray  # (n_subtokens,) the owning window's index within its text
    local_window: np.ndarray  # (n_jobs,) each window's index within its text
    job_start: np.ndarray  # (n_jobs,) each window's first sub-token, flat
    job_length: np.ndarray  # (n_jobs,)


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
    (1 on ONNX Runtime, OpenVINO's optimal number of requests), and is 1 anywhere else;
    `decode` is a key of `decode.DECODERS`: each word's argmax label, or the best sequence the
    label scheme allows."""

    batch_size: int = 32
    max_batch_tokens: int = 4096
    segment: str = "lines"
    streams: int = 0
    decode: str = "viterbi"  # test F1 +0.40, dev +0.35 on the default model (README)

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if self.segment not in SEGMENTS:
            raise ValueError(
                f"unknown segment mode {self.segment!r}; expected one of {list(SEGMENTS)}"
            )
        if self.decode not in DECODERS:
            raise ValueError(f"unknown decoding {self.decode!r}; expected one of {list(DECODERS)}")
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
        scheme: str | None = None,
    ):
        """Windows of `max_length` sub-tokens (specials included) overlapping by `stride`;
        `scheme` is the labels' scheme (None: inferred, see `decode.transitions`)."""
        options = options or TaggerOptions()
        options.check()
        self.options = options
        self.min_newlines = SEGMENTS[options.segment]
        self.encoder = encoder
        self.labels = LabelSet(labels)
        self.transitions = transitions(labels, scheme)
        self.decode = options.decode
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
        return self.infer(self.prepare(encoded))

    def prepare(self, encoded: Sequence[Encoded]) -> Prepared:
        """The windows and length-sorted batches of these texts, before any inference (the
        local engine prepares the next chunk while the runtime infers this one)."""
        # Every window of every text: (text index, start, end), plus who owns each sub-token.
        jobs: list[tuple[int, int, int]] = []
        owners: list[np.ndarray] = []
        window_base: list[int] = []
        for t, enc in enumerate(encoded):
            spans = self._windows(enc)
            window_base.append(len(jobs))
            owners.append(best_window(len(enc), spans))
            jobs.extend((t, s, e) for s, e in spans)
        lengths = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))
        text_offset = np.cumsum(lengths) - lengths  # (n_texts,) first sub-token of each text
        job_array = np.array(jobs, dtype=np.int64).reshape(-1, 3)  # (n_jobs, 3)
        order = sorted(range(len(jobs)), key=lambda j: jobs[j][2] - jobs[j][1])
        return Prepared(
            encoded=encoded,
            jobs=jobs,
            batches=list(self._batches(order, jobs)),
            # (n,) the window (index within its text) that owns each sub-token
            owner=np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64),
            # (n_jobs,) each window's index within its text, first sub-token (flat), length
            local_window=(
                np.arange(len(jobs)) - np.asarray(window_base, np.int64)[job_array[:, 0]]
            ),
            job_start=text_offset[job_array[:, 0]] + job_array[:, 1],
            job_length=job_array[:, 2] - job_array[:, 1],
        )

    def infer(self, prepared: Prepared) -> list[Prediction]:
        """Run the prepared batches and decode words. The sub-tokens of all the texts sit in
        flat arrays; each batch's logits are scattered into them with a few array operations
        per batch (not per row), and the softmax is taken only where each window owns."""
        encoded, jobs, batches = prepared.encoded, prepared.jobs, prepared.batches
        job_start, job_length = prepared.job_start, prepared.job_length
        local_window, owner_flat = prepared.local_window, prepared.owner
        n = len(owner_flat)
        label_flat = np.zeros(n, dtype=np.int64)
        prob_flat = np.zeros(n, dtype=np.float32)
        # Viterbi needs every label's probability; argmax only the best one's.
        n_labels = len(self.labels.labels)
        dist_flat = np.zeros((n, n_labels), dtype=np.float32) if self.decode == "viterbi" else None

        def run(batch: list[int]) -> np.ndarray:
            return self._run(batch, jobs, encoded)  # (batch, seq, labels)

        offset = len(self.encoder.prefix_ids)
        for batch, logits in zip(batches, self._map(run, batches), strict=True):
            rows_jobs = np.asarray(batch, dtype=np.int64)
            sizes = job_length[rows_jobs]  # (rows,)
            row = np.repeat(np.arange(len(batch)), sizes)  # (positions,) of every window row
            column = np.arange(len(row)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            flat = np.repeat(job_start[rows_jobs], sizes) + column
            mine = owner_flat[flat] == np.repeat(local_window[rows_jobs], sizes)
            row, column, flat = row[mine], column[mine] + offset, flat[mine]
            probs = softmax(logits[row, column])  # (owned positions, labels)
            best = probs.argmax(-1)
            label_flat[flat] = best
            prob_flat[flat] = np.take_along_axis(probs, best[:, None], -1)[:, 0]
            if dist_flat is not None:
                dist_flat[flat] = probs
        return self._word_predictions(encoded, label_flat, prob_flat, dist_flat)

    def _word_predictions(
        self,
        encoded: Sequence[Encoded],
        label_flat: np.ndarray,
        prob_flat: np.ndarray,
        dist_flat: np.ndarray | None,
    ) -> list[Prediction]:
        """Each text's Prediction from the flat sub-token labels: a word takes its first
        sub-token's; with Viterbi, texts whose argmax breaks the scheme are decoded again."""
        if not encoded:
            return []
        first = np.concatenate([e.first for e in encoded])  # (n,) a text begins with a word
        last = np.ones(len(first), dtype=bool)  # (n,) a word's last sub-token
        last[:-1] = first[1:]
        words_per_text = np.fromiter((e.first.sum() for e in encoded), np.int64, len(encoded))
        cuts = np.cumsum(words_per_text)[:-1]
        word_labels = label_flat[first]
        word_probs = prob_flat[first]
        starts = np.concatenate([e.starts for e in encoded])[first]
        ends = np.concatenate([e.ends for e in encoded])[last]
        segments = None
        if self.min_newlines and all(e.newlines is not None for e in encoded):
            newlines = np.concatenate([e.newlines for e in encoded])
            segments = np.split(newlines[first] >= self.min_newlines, cuts)
        labels = np.split(word_labels, cuts)
        probs = np.split(word_probs, cuts)
        if dist_flat is not None:
            self._viterbi(labels, probs, dist_flat[first], cuts, segments)
        return [
            Prediction(
                labels[t], probs[t], w_starts, w_ends, None if segments is None else segments[t]
            )
            for t, (w_starts, w_ends) in enumerate(
                zip(np.split(starts, cuts), np.split(ends, cuts), strict=True)
            )
        ]

    def _viterbi(self, labels, probs, dist: np.ndarray, cuts: np.ndarray, segments) -> None:
        """Replace, in place, the labels and probabilities of the texts whose argmax words
        break the scheme by the best sequence it allows (the others' argmax is that)."""
        rules = self.transitions
        if not rules.constrains:
            return
        for t, dist_t in enumerate(np.split(dist, cuts)):
            restarts = None if segments is None else segments[t]
            if not is_valid(labels[t], rules, restarts):
                labels[t], probs[t] = decode_words(dist_t, rules, "viterbi", restarts)

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
        """Entity spans of one text (see `spans_of`)."""
        return self.spans_of([text], [prediction])[0]

    def spans_of(self, texts: Sequence[str], predictions: Sequence[Prediction]) -> list[list[Span]]:
        """Entity spans of each text, with BIO repair: an I- after O or after another type
        opens a new entity. `text[span.start:span.end]` is the span's surface text. The words
        of all the texts are decoded together, in one pass of array operations: a text's first
        word opens an entity as it would alone, so each text's spans are those it has alone."""
        if not predictions:
            return []
        n_words = np.fromiter((len(p.labels) for p in predictions), np.int64, len(predictions))
        result: list[list[Span]] = [[] for _ in predictions]
        if not n_words.sum():
            return result
        labels = np.concatenate([p.labels for p in predictions])
        probs = np.concatenate([p.probs for p in predictions])
        text_starts = np.cumsum(n_words) - n_words  # (n_texts,) first word of each text
        begins_text = np.zeros(len(labels), dtype=bool)
        begins_text[text_starts[n_words > 0]] = True
        kind = self.labels.type_of[labels]  # (n_words,) -1 for O
        previous = np.concatenate([[-1], kind[:-1]])
        previous[begins_text] = -1
        # (n_words,) whether the word before closed its entity (an E- or S- in BIOES)
        after_close = np.concatenate([[False], self.labels.closes[labels][:-1]])
        after_close[begins_text] = False
        opens = (kind >= 0) & (self.labels.is_begin[labels] | (previous != kind) | after_close)
        segments = [p.opens_segment for p in predictions]
        if any(o is not None for o in segments):
            opens_segment = np.concatenate(
                [
                    np.zeros(n, dtype=bool) if o is None else o
                    for o, n in zip(segments, n_words, strict=True)
                ]
            )
            opens |= (kind >= 0) & opens_segment  # entities never cross segments
        first_word = np.flatnonzero(opens)
        n_chunks = len(first_word)
        if not n_chunks:
            return result
        chunk = np.cumsum(opens) - 1
        inside = kind >= 0
        last_word = np.zeros(n_chunks, dtype=np.int64)
        np.maximum.at(last_word, chunk[inside], np.flatnonzero(inside))
        total = np.bincount(chunk[inside], weights=probs[inside], minlength=n_chunks)
        count = np.bincount(chunk[inside], minlength=n_chunks)
        word_starts = np.concatenate([p.word_starts for p in predictions])
        word_ends = np.concatenate([p.word_ends for p in predictions])
        # The text each entity is in: the last text starting at or before its first word
        # (texts without words start where the next one does).
        owner = np.searchsorted(text_starts, first_word, side="right") - 1
        owners = owner.tolist()  # (n_spans,) the text of each span
        starts = word_starts[first_word].tolist()
        ends = word_ends[last_word].tolist()
        types = kind[first_word].tolist()
        scores = (total / count).tolist()
        names = self.labels.types
        for t, s, e, k, p in zip(owners, starts, ends, types, scores, strict=True):
            text = texts[t]
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
                result[t].append(Span(s, e, names[k], float(p)))
        return result

    def tag(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans for each text. The caller bounds how many texts it passes at once."""
        encoded = self.encoder.encode_batch(texts)
        return self.spans_of(texts, self.predict(encoded))


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
