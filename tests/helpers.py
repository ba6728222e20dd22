"""Test helpers shared by the inference-side tests: fake logits functions that force known
labels, checks of span invariants, and builders of small annotate corpora in every input format."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import shutil
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ner_batch.export import Tolerances
from ner_batch.features import TextEncoder
from ner_batch.tagger import Span

# Export gates wide open: random tiny models are exported for their spans, not their F1.
LOOSE = Tolerances(int8_max_f1_drop=1.0, fp16_max_f1_drop=1.0, fp16_max_logit_diff=1e9)


def label_logits(labels: Sequence[str], label: str, confidence: float = 5.0) -> np.ndarray:
    """(n_labels,) logits with `label` ahead of the others by `confidence`."""
    row = np.zeros(len(labels), dtype=np.float32)
    row[list(labels).index(label)] = confidence
    return row


def probability(n_labels: int, confidence: float) -> float:
    """softmax probability of the winning label in `label_logits`."""
    return float(np.exp(confidence) / (np.exp(confidence) + n_labels - 1))


def constant_logits_fn(labels: Sequence[str], label: str) -> Callable:
    """A LogitsFn that predicts `label` for every position."""
    row = label_logits(labels, label)

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        return np.broadcast_to(row, (*ids.shape, len(labels))).copy()

    return logits


def vocab_logits_fn(
    encoder: TextEncoder, labels: Sequence[str], by_token: dict[str, tuple[str, float]]
) -> Callable:
    """A LogitsFn that predicts, for each sub-token, the (label, confidence) its vocabulary
    entry maps to in `by_token`, and O for everything else (specials, padding)."""
    table = np.tile(label_logits(labels, "O"), (encoder.tokenizer.get_vocab_size(), 1))
    for token, (label, confidence) in by_token.items():
        token_id = encoder.tokenizer.token_to_id(token)
        assert token_id is not None, token
        table[token_id] = label_logits(labels, label, confidence)

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        return table[ids]

    return logits


def hashed_logits_fn(labels: Sequence[str], seed: int = 0, positional: bool = True) -> Callable:
    """A LogitsFn whose label for a sub-token is a pseudo-random function of its id (and of its
    position in the window, so that [UNK] varies too): every BIO sequence (I- after O, type
    changes, B- runs) shows up on varied text."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(1 << 16, len(labels))).astype(np.float32) * 4

    def logits(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        keys = ids * 7919 + (np.arange(ids.shape[1]) if positional else 0)
        return table[keys % len(table)]

    return logits


def check_spans(text: str, spans: Sequence[Span], types: Sequence[str]) -> None:
    """The offset contract of DESIGN.md, plus: no overlap, no cut grapheme at either end."""
    previous_end = 0
    for span in spans:
        assert 0 <= span.start < span.end <= len(text), (span, len(text))
        surface = text[span.start : span.end]
        assert surface, span
        assert not surface[0].isspace() and not surface[-1].isspace(), (span, surface)
        # A combining mark belongs to the character before it: a span neither starts on one
        # nor stops just before one.
        assert not unicodedata.category(text[span.start]).startswith("M"), (span, surface)
        if span.end < len(text):
            assert not unicodedata.category(text[span.end]).startswith("M"), (span, surface)
        assert span.start >= previous_end, ("spans overlap or are out of order", spans)
        previous_end = span.end
        assert span.label in types
        assert 0.0 <= span.score <= 1.0 + 1e-6


# Documents of the tiny corpus: words of the tiny vocabulary, so the tiny model finds something.
DOCS = [
    "John Smith visited Paris .",
    "The European Commission met Mary in London .",
    "Acme Corp said Peter Blackburn was in Berlin on Thursday .",
    "EU rejects German call to boycott British lamb .",
    "",
    "Mary and John met the president of France in Paris .",
    "Google and Apple visited London with the minister .",
]


def write_txt(path: Path, texts: Sequence[str], compress: bool = False) -> Path:
    """One line per text."""
    data = "".join(t + "\n" for t in texts).encode()
    return _write(path, data, compress)


def write_jsonl(path: Path, records: Sequence[dict], compress: bool = False) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    return _write(path, data, compress)


def write_parquet(path: Path, columns: dict[str, list], compress: bool = False) -> Path:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return _write(path, sink.getvalue().to_pybytes(), compress)


def _write(path: Path, data: bytes, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def build_corpus(root: Path) -> Path:
    """A directory with every input format, plain and gzipped, in nested folders; returns it."""
    corpus = root / "corpus"
    for compress in (False, True):
        sub = corpus / ("gz" if compress else "plain")
        for i, text in enumerate(DOCS[:3]):
            _write(sub / "txt" / f"doc{i}.txt", text.encode(), compress)
        write_jsonl(
            sub / "records.jsonl",
            [{"id": f"j{i}", "text": t} for i, t in enumerate(DOCS)],
            compress,
        )
        write_parquet(
            sub / "table.parquet",
            {"id": [f"p{i}" for i in range(len(DOCS))], "text": DOCS},
            compress,
        )
    # Skipped inside directories: unknown extension, and names starting with _ or .
    (corpus / "notes.md").write_text("not an input")
    (corpus / "_hidden.txt").write_text("John Smith")
    write_txt(corpus / "_drafts" / "draft.txt", ["John Smith"])
    write_jsonl(corpus / ".cache" / "cached.jsonl", [{"text": "John Smith"}])
    return corpus


def copy_bundle(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def write_bad_inputs(root: Path) -> list[Path]:
    """One file per kind of bad input (each also holding good documents where it can)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = root / "a_lines.txt"
    lines.write_bytes(b"John Smith\n\xff\xfe not utf-8\nMary in Paris\n")
    records = root / "b_records.jsonl"
    records.write_text(
        "\n".join(
            [
                '{"id": "ok", "text": "Paris"}',
                "not json",
                '{"id": "no-text"}',
                '{"id": "number", "text": 5}',
                "[1, 2]",
                "",  # a blank line is not a document
                '{"id": "null-text", "text": null}',
                '{"text": "London"}',
            ]
        )
        + "\n"
    )
    table = write_parquet(root / "c_table.parquet", {"id": ["x", "y"], "text": ["Mary", None]})
    binary = root / "d_binary.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    truncated = root / "e_truncated.jsonl.gz"
    whole = gzip.compress(
        "".join(json.dumps({"text": f"Mary {i}"}) + "\n" for i in range(300)).encode()
    )
    truncated.write_bytes(whole[: len(whole) // 2])
    not_parquet = root / "f_broken.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet")
    return [lines, records, table, binary, truncated, not_parquet]


@contextlib.contextmanager
def progress_events() -> Iterator[list[dict]]:
    """The `progress` log events (their fields) of what runs inside, as a list filled in."""
    events: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "progress":
                events.append(vars(record))

    logger = logging.getLogger("ner_batch")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def write_shards(directory: Path, texts: Sequence[str], shards: int = 4) -> Path:
    """`shards` JSONL files of `texts` each (ids `<shard>-<i>`), each with a poison line (not
    JSON: a reject) after its 7th record; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        lines = [json.dumps({"id": f"{shard}-{i}", "text": t}) for i, t in enumerate(texts)]
        lines.insert(7, "not json")
        (directory / f"shard{shard}.jsonl").write_text("\n".join(lines) + "\n")
    return directory
