"""`nerbatch gold2corpus`: turn CoNLL gold into an annotate input, for end-to-end scoring.

Each gold document (or sentence) becomes one JSONL record `{"id", "text"}` whose text is its
tokens joined by single spaces, sentences joined by newlines. Ids are stable (`FILE#docN` or
`FILE#docN/sM`), so `nerbatch score --predictions` can map spans back onto the gold tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .conll import Document, read_conll

UNITS = ("document", "sentence")


def sentence_id(doc_id: str, index: int) -> str:
    return f"{doc_id}/s{index}"


def gold_records(documents: Sequence[Document], unit: str = "document") -> list[dict]:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    records = []
    for document in documents:
        lines = [" ".join(s.tokens) for s in document.sentences]
        if unit == "document":
            records.append({"id": document.doc_id, "text": "\n".join(lines)})
        else:
            records += [
                {"id": sentence_id(document.doc_id, i), "text": line}
                for i, line in enumerate(lines)
            ]
    return records


def gold_layout(documents: Sequence[Document]) -> dict[str, list[tuple[int, int]]]:
    """Record id -> [(global sentence index, character offset of the sentence in the record)],
    for both units (their ids do not collide)."""
    layout: dict[str, list[tuple[int, int]]] = {}
    index = 0
    for document in documents:
        offset = 0
        parts = []
        for i, sentence in enumerate(document.sentences):
            parts.append((index, offset))
            layout[sentence_id(document.doc_id, i)] = [(index, 0)]
            offset += len(" ".join(sentence.tokens)) + 1
            index += 1
        layout[document.doc_id] = parts
    return layout


def gold_to_corpus(gold: str | Path, out: str | Path, unit: str = "document") -> int:
    """Write the JSONL corpus; returns the number of records."""
    records = gold_records(read_conll(gold), unit)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
