"""What a person reads after `nerbatch score`: a type confusion matrix (with missed and spurious
entities), the most frequent false positives and negatives in context, two PNG charts, and the
HTML page of `score --html` (`html_report`, built with page.py: the tables, the confusion as a
heat map, training curves, and each error's sentence with gold and predicted entities side by
side).

Entities are matched by exact token span, as seqeval's strict counting does: the same span with
another type is a confusion; a gold entity with no prediction on its span is missed; a predicted
entity with no gold on its span is spurious.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .conll import chunks
from .storage import write_file

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


def _save_png(fig, path: str | Path) -> None:
    """The figure as a PNG to a local path (atomically) or an object-store URI; closes it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        _pyplot().close(fig)
    write_file(path, buffer.getvalue())


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
    _save_png(fig, path)


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
    _save_png(fig, path)


def error_examples(
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str]],
    errors: dict,
    context: int = 6,
) -> dict:
    """For each error that `top_errors` listed, the sentence of its example (the first where it
    occurs, as there) cut to `context` words around it, with the gold and the predicted entities
    of that window: {kind: [{"tokens", "gold": [(type, start, end)], "predicted", "focus":
    (start, end)}]} in the order of `errors[kind]`, token indices relative to the window."""
    wanted = {
        (kind, e["text"], e["type"]): index
        for kind, entries in errors.items()
        for index, e in enumerate(entries)
    }
    found: dict[str, list] = {kind: [None] * len(entries) for kind, entries in errors.items()}
    for words, gold_tags, pred_tags in zip(tokens, gold, predicted, strict=True):
        if not wanted:
            break
        gold_set = set(chunks(gold_tags))
        pred_set = set(chunks(pred_tags))
        for kind, wrong in (
            ("false_positives", pred_set - gold_set),
            ("false_negatives", gold_set - pred_set),
        ):
            for label, start, end in sorted(wrong, key=lambda c: (c[1], c[2], c[0])):
                key = (kind, " ".join(words[start:end]), label)
                if key not in wanted:
                    continue
                index = wanted.pop(key)
                low, high = max(0, start - context), min(len(words), end + context)

                def inside(spans, low=low, high=high):
                    return sorted(
                        (t, s - low, e - low) for t, s, e in spans if s >= low and e <= high
                    )

                found[kind][index] = {
                    "tokens": list(words[low:high]),
                    "gold": inside(gold_set),
                    "predicted": inside(pred_set),
                    "focus": (start - low, end - low),
                }
    return found


def _sentence_html(tokens: Sequence[str], entities, focus, labels) -> str:
    """Tokens joined by spaces with `entities` [(type, start, end)] (token indices) marked, the
    one at `focus` outlined."""
    from .page import Highlight, check_spans, highlight

    starts, ends, position = [], [], 0
    for token in tokens:
        starts.append(position)
        position += len(token)
        ends.append(position)
        position += 1
    text = " ".join(tokens)
    spans = [
        Highlight(starts[s], ends[e - 1], t, css="focus" if (s, e) == tuple(focus) else "")
        for t, s, e in entities
        if 0 <= s < e <= len(tokens)
    ]
    drawable, _ = check_spans(text, spans)  # chunks of one tag sequence never overlap
    return f'<div class="text">{highlight(text, drawable, labels)}</div>'


def _heat(value: int, peak: int) -> str:
    """Inline style of a heat-map cell: a log colour scale (as the PNG), so that the small
    off-diagonal counts are visible next to the diagonal."""
    import math

    alpha = math.log1p(value) / math.log1p(peak) if peak else 0.0
    colour = "#fff" if alpha > 0.55 else "#111"
    return f"background:rgba(37,99,235,{alpha:.3f});color:{colour}"


def html_report(report: dict, examples: dict | None = None, epochs: list | None = None) -> str:
    """The score report as one self-contained HTML page: the per-type table (both seqeval modes),
    the type confusion as a heat map, training curves (`epochs`: the records of a checkpoint's
    metrics.json) and the error examples, gold and predicted entities side by side."""
    from .page import Labels, page

    default = report["default"]
    types = sorted(set(default["per_type"]) | set(report.get("confusion", {}).get("types", [])))
    labels = Labels(types)
    parts = [_summary_html(report), _per_type_html(report, labels)]
    if report.get("confusion"):
        parts.append(_confusion_html(report["confusion"]))
    if epochs:
        parts.append(_curves_html(epochs, labels))
    parts += _errors_html(report.get("errors") or {}, examples or {}, labels)
    style = (
        labels.css()
        + "table.heat td{min-width:64px;text-align:center}table.heat td.diag{font-weight:700}"
        "table.errors{width:100%;table-layout:fixed}table.errors th:nth-child(1){width:15%}"
        "table.errors th:nth-child(2){width:8%}table.errors th:nth-child(3){width:6%}"
        "table.errors .text{font-size:14px;line-height:1.8}"
        "table.num td:nth-child(n+2){text-align:right;font-variant-numeric:tabular-nums}"
        "table.num td:nth-child(5){text-align:left;min-width:110px}.chart{margin:4px 8px}"
    )
    return page(
        "nerbatch score",
        f"{report.get('source', '')} on {report.get('gold', '')}",
        "".join(parts),
        style=style,
    )


def _summary_html(report: dict) -> str:
    from .page import esc

    micro, strict = report["default"]["micro"], report["strict"]
    return (
        "<section><h2>Summary</h2>"
        '<dl class="kv">'
        f"<dt>predictions</dt><dd>{esc(report.get('source', '-'))}</dd>"
        f"<dt>gold</dt><dd>{esc(report.get('gold', '-'))}</dd>"
        f"<dt>micro F1</dt><dd><b>{100 * micro['f1']:.2f}</b> (P {100 * micro['precision']:.2f}, "
        f"R {100 * micro['recall']:.2f}; strict F1 {100 * strict['micro']['f1']:.2f})</dd>"
        f"<dt>sentences, tokens</dt><dd>{report['n_sentences']:,}, {report['n_tokens']:,}</dd>"
        f"<dt>token accuracy</dt><dd>{100 * report['token_accuracy']:.2f}%</dd></dl></section>"
    )


def _per_type_html(report: dict, labels) -> str:
    from .page import bar, esc, table

    default, strict = report["default"], report["strict"]
    named = [
        (name, v, strict["per_type"].get(name, {"f1": 0.0}), True)
        for name, v in default["per_type"].items()
    ]
    named += [
        (f"{key} avg", default[key], strict[key], False) for key in ("micro", "macro", "weighted")
    ]
    rows = [
        [
            labels.chip(name) if is_type else f"<b>{esc(name)}</b>",
            f"{100 * v['precision']:.2f}",
            f"{100 * v['recall']:.2f}",
            f"{100 * v['f1']:.2f}",
            bar(v["f1"], labels.colour[name] if is_type else "#7aa7e0"),
            f"{100 * s['f1']:.2f}",
            f"{v['support']:,}",
        ]
        for name, v, s, is_type in named
    ]
    return (
        "<section><h2>Per type (seqeval default mode; strict IOB2 F1 beside it)</h2>"
        + table(["type", "precision", "recall", "F1", "", "strict F1", "support"], rows, "num")
        + "</section>"
    )


def _confusion_html(confusion: dict) -> str:
    from .page import esc

    columns = [*confusion["types"], MISSED]
    peak = max((v for row in confusion["matrix"].values() for v in row.values()), default=0)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><th>{esc(row)}</th>"
        + "".join(
            f'<td class="n{" diag" if row == column else ""}" '
            f'style="{_heat(cells[column], peak)}" title="gold {esc(row)}, predicted '
            f'{esc(column)}: {cells[column]}">{cells[column]:,}</td>'
            for column in columns
        )
        + "</tr>"
        for row, cells in confusion["matrix"].items()
    )
    return (
        "<section><h2>Entity type confusion</h2>"
        '<p class="muted">Rows: gold type (spurious: predicted where gold has no entity on '
        "that span); columns: predicted type (missed: no prediction on the gold span). Exact "
        "spans; log colour scale.</p>"
        f'<table class="heat"><thead><tr><th>gold \\ predicted</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _curves_html(epochs: list, labels) -> str:
    from .page import line_chart

    f1 = {
        "dev F1": [(e.get("epoch"), _percent(e.get("dev_f1"))) for e in epochs],
        "dev precision": [(e.get("epoch"), _percent(e.get("dev_precision"))) for e in epochs],
        "dev recall": [(e.get("epoch"), _percent(e.get("dev_recall"))) for e in epochs],
    }
    per_type: dict[str, list] = {}
    for e in epochs:
        for name, v in (e.get("dev_per_type") or {}).items():
            per_type.setdefault(name, []).append((e.get("epoch"), _percent(v.get("f1"))))
    loss = {"training loss": [(e.get("epoch"), e.get("train_loss")) for e in epochs]}
    charts = [
        line_chart(f1, "dev precision / recall / F1 (%)", "epoch", "%"),
        line_chart(loss, "training loss (mean per epoch)", "epoch", "loss"),
    ]
    if per_type:
        charts.append(
            line_chart(
                per_type,
                "dev F1 per type (%)",
                "epoch",
                "%",
                colours={t: _darker(labels.colour.get(t, "#888888")) for t in per_type},
            )
        )
    return (
        '<section><h2>Training curves</h2><div class="grid">' + "".join(charts) + "</div></section>"
    )


_ERROR_SECTIONS = (
    (
        "false_positives",
        "Top false positives",
        "predicted, not in gold (a wrong type or wrong boundaries count here and as a false "
        "negative)",
    ),
    ("false_negatives", "Top false negatives", "in gold, not predicted with that type and span"),
)


def _errors_html(errors: dict, examples: dict, labels) -> list[str]:
    from .page import esc, table

    sections = []
    for kind, heading, note in _ERROR_SECTIONS:
        entries = errors.get(kind) or []
        if not entries:
            continue
        found = examples.get(kind) or [None] * len(entries)
        rows = []
        for entry, example in zip(entries, found, strict=False):
            if example:
                gold_html = _sentence_html(
                    example["tokens"], example["gold"], example["focus"], labels
                )
                pred_html = _sentence_html(
                    example["tokens"], example["predicted"], example["focus"], labels
                )
            else:
                gold_html = pred_html = f'<div class="text">{esc(entry["example"])}</div>'
            rows.append(
                [
                    f"<b>{esc(entry['text'])}</b>",
                    labels.chip(entry["type"])
                    if entry["type"] in labels.index
                    else esc(entry["type"]),
                    f"{entry['count']:,}",
                    gold_html,
                    pred_html,
                ]
            )
        sections.append(
            f'<section><h2>{esc(heading)}</h2><p class="muted">{esc(note)}; one example each, '
            "the entity outlined.</p>"
            + table(["entity", "type", "count", "gold", "predicted"], rows, "errors")
            + "</section>"
        )
    return sections


def _percent(value) -> float | None:
    return None if value is None else 100 * value


def _darker(colour: str) -> str:
    """A darker shade of a #rrggbb label colour, for lines on white."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"#{int(r * 0.6):02x}{int(g * 0.6):02x}{int(b * 0.6):02x}"
