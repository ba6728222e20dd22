"""What a person reads after `nerbatch score`: a type confusion matrix (with missed and spurious
entities), the most frequent false positives and negatives in context, and two PNG charts.

Entities are matched by exact token span, as seqeval's strict counting does: the same span with
another type is a confusion; a gold entity with no prediction on its span is missed; a predicted
entity with no gold on its span is spurious.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .conll import chunks

MISSED = "missed"
SPURIOUS = "spurious"


def type_confusion(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """{"types": [...], "matrix": {gold_type_or_spurious: {pred_type_or_missed: count}}}."""
    counts: Counter = Counter()
    types: set[str] = set()
    for gold_tags, pred_tags in zip(gold, predicted, strict=True):
        gold_spans = {(s, e): t for t, s, e in chunks(gold_tags)}
        pred_spans = {(s, e): t for t, s, e in chunks(pred_tags)}
        types |= set(gold_spans.values()) | set(pred_spans.values())
        for span, gold_type in gold_spans.items():
            counts[gold_type, pred_spans.get(span, MISSED)] += 1
        for span, pred_type in pred_spans.items():
            if span not in gold_spans:
                counts[SPURIOUS, pred_type] += 1
    ordered = sorted(types)
    rows = [*ordered, SPURIOUS]
    columns = [*ordered, MISSED]
    return {
        "types": ordered,
        "matrix": {r: {c: counts.get((r, c), 0) for c in columns} for r in rows},
    }


def top_errors(
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str]],
    limit: int = 15,
    context: int = 6,
) -> dict:
    """The most frequent false positives and false negatives (surface text + type), each with
    its count and one example in context, the entity in [brackets]."""
    errors: dict[str, Counter] = {"false_positives": Counter(), "false_negatives": Counter()}
    examples: dict[tuple, str] = {}
    for words, gold_tags, pred_tags in zip(tokens, gold, predicted, strict=True):
        gold_set = set(chunks(gold_tags))
        pred_set = set(chunks(pred_tags))
        for kind, wrong in (
            ("false_positives", pred_set - gold_set),
            ("false_negatives", gold_set - pred_set),
        ):
            for label, start, end in wrong:
                surface = " ".join(words[start:end])
                key = (kind, surface, label)
                errors[kind][surface, label] += 1
                if key not in examples:
                    left = " ".join(words[max(0, start - context) : start])
                    right = " ".join(words[end : end + context])
                    examples[key] = f"{left} [{surface}] {right}".strip()
    return {
        kind: [
            {"text": surface, "type": label, "count": n, "example": examples[kind, surface, label]}
            for (surface, label), n in counter.most_common(limit)
        ]
        for kind, counter in errors.items()
    }


def markdown_details(confusion: dict, errors: dict) -> str:
    columns = [*confusion["types"], MISSED]
    lines = [
        "## Entity type confusion (rows: gold, columns: predicted; exact spans)",
        "",
        "| gold \\ predicted | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for row, cells in confusion["matrix"].items():
        lines.append(f"| {row} | " + " | ".join(str(cells[c]) for c in columns) + " |")
    for kind, title in (
        ("false_positives", "Top false positives (predicted, not in gold)"),
        ("false_negatives", "Top false negatives (in gold, not predicted)"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| entity | type | count | example |",
            "| --- | --- | ---: | --- |",
        ]
        for e in errors[kind]:
            example = e["example"].replace("|", "\\|")
            lines.append(
                f"| {e['text'].replace('|', chr(92) + '|')} | {e['type']} | "
                f"{e['count']} | {example} |"
            )
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_type(report: dict, path: str | Path, title: str = "") -> None:
    """Grouped bars of precision, recall and F1 per type (seqeval default mode) + micro avg."""
    import numpy as np

    plt = _pyplot()
    table = report["default"]
    names = [*table["per_type"], "micro avg"]
    rows = [*table["per_type"].values(), table["micro"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4.2))
    for i, (metric, color) in enumerate(
        (("precision", "#4C72B0"), ("recall", "#DD8452"), ("f1", "#55A868"))
    ):
        values = [100 * r[metric] for r in rows]
        bars = ax.bar(x + (i - 1) * 0.27, values, 0.27, label=metric, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, [f"{n}\n(n={r['support']})" for n, r in zip(names, rows, strict=True)])
    ax.set_ylabel("%")
    low = min(100 * min(r[m] for m in ("precision", "recall", "f1")) for r in rows)
    ax.set_ylim(max(0, low - 10), 101)
    ax.set_title(title or "precision / recall / F1 per entity type")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(confusion: dict, path: str | Path, title: str = "") -> None:
    """Heat map of the type confusion matrix, with the count in each cell."""
    import numpy as np

    plt = _pyplot()
    rows = list(confusion["matrix"])
    columns = [*confusion["types"], MISSED]
    values = np.array([[confusion["matrix"][r][c] for c in columns] for r in rows])
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.8 * len(rows) + 2))
    # Log colour scale so that the small off-diagonal cells are visible next to the diagonal.
    ax.imshow(np.log1p(values), cmap="Blues")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    threshold = np.log1p(values).max() / 2 if values.size else 0
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(
                j,
                i,
                str(values[i, j]),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if np.log1p(values[i, j]) > threshold else "black",
            )
    ax.set_title(title or "entity type confusion (exact spans)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
