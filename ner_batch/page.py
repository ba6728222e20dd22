"""Self-contained HTML pages a person reads: the builder that `nerbatch view` and
`nerbatch score --html` share.

A page is one file with inline CSS and at most one inline script. Its Content-Security-Policy
(`default-src 'none'`, the script allowed by its sha256 only) means that nothing is fetched (no
network, no fonts, no images but inline SVG) and that no other script can run, an injected one
included. Every string that comes from data goes through `esc` (html.escape with quotes, plus the
few characters that HTML parsing would otherwise change), so text renders as text.

Entity highlights are cut here, in Python, on `str` indices (code points), exactly where the
offsets point: never in JavaScript, whose strings count UTF-16 units (an emoji is two of them).
`check_spans` sorts out the spans that cannot be drawn (out of range, overlapping, not matching
the text) so a damaged output is reported instead of drawn wrongly.

It does not read outputs, inputs or scores: view_page.py and report.py pass it plain values.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Colours for the usual entity types (CoNLL, OntoNotes), then a palette for any other label, in
# sorted order of the labels of a page. Light backgrounds: dark text stays readable on each.
KNOWN_COLOURS = {
    "PER": "#c7b9ff",
    "PERSON": "#c7b9ff",
    "ORG": "#8ee4e4",
    "LOC": "#ffc58a",
    "GPE": "#ffd98a",
    "MISC": "#d3e98c",
    "NORP": "#f5b8d2",
    "DATE": "#bfe3ff",
    "FAC": "#e8c6a0",
    "EVENT": "#f7a8a8",
    "PRODUCT": "#cde8b8",
}
PALETTE = (
    "#ffb3c7",
    "#a8d8ff",
    "#b8f0b0",
    "#ffe08a",
    "#e0c8ff",
    "#9fe6d6",
    "#f7b58f",
    "#c7d2fe",
    "#f0abfc",
    "#bef264",
    "#fda4af",
    "#fcd34d",
)

# HTML parsing turns CR (and CRLF) into LF, drops NUL and reads numeric references to C1 controls
# as Windows-1252: CR becomes a character reference (which the parser keeps as U+000D), NUL a
# visible U+2400 (no HTML text can hold U+0000).
_AFTER_ESCAPE = str.maketrans({"\r": "&#13;", "\0": "\u2400"})
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src {script}; "
    "base-uri 'none'; form-action 'none'"
)


def esc(value: object) -> str:
    """Text (or any value, through str) as HTML text or attribute value, exactly as given."""
    return html.escape(str(value), quote=True).translate(_AFTER_ESCAPE)


@dataclass(frozen=True)
class Highlight:
    """An entity to draw over `text[start:end]`: its label, score and (for damaged outputs) the
    surface text the output recorded, which must equal the text between the offsets."""

    start: int
    end: int
    label: str
    score: float | None = None
    surface: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # more data-* attributes
    css: str = ""  # more classes (e.g. "focus")


def check_spans(
    text: str, spans: Iterable[Highlight]
) -> tuple[list[Highlight], list[tuple[Highlight, str]]]:
    """(the spans that can be drawn, in order; [(span, why not)] for the others). A span is
    drawn only if 0 <= start < end <= len(text), its recorded surface (if any) equals
    text[start:end], and it does not overlap a span drawn before it (by start, then end)."""
    drawable: list[Highlight] = []
    problems: list[tuple[Highlight, str]] = []
    end_of_last = 0
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if not (0 <= span.start < span.end <= len(text)):
            problems.append(
                (span, f"offsets [{span.start}, {span.end}) out of range (text has {len(text)})")
            )
        elif span.surface is not None and text[span.start : span.end] != span.surface:
            problems.append(
                (
                    span,
                    f"recorded text {span.surface!r} differs from the document's "
                    f"{text[span.start : span.end]!r} (did the input change?)",
                )
            )
        elif drawable and span.start < end_of_last:
            last = drawable[-1]
            problems.append((span, f"overlaps {last.label} [{last.start}, {last.end}); not drawn"))
        else:
            drawable.append(span)
            end_of_last = span.end
    return drawable, problems


class Labels:
    """A CSS class and colour per label (labels are data: never used as class names)."""

    def __init__(self, labels: Iterable[str]):
        self.order = sorted(set(labels))
        self.index = {label: i for i, label in enumerate(self.order)}
        spare = iter(PALETTE * (1 + len(self.order) // len(PALETTE)))
        self.colour = {
            label: KNOWN_COLOURS.get(label.upper()) or next(spare) for label in self.order
        }

    def css_class(self, label: str) -> str:
        return f"l{self.index[label]}"

    def css(self) -> str:
        return "".join(f".l{i}{{--c:{self.colour[label]}}}" for i, label in enumerate(self.order))

    def chip(self, label: str) -> str:
        return f'<span class="chip {self.css_class(label)}">{esc(label)}</span>'


def score_value(score: float | None) -> str:
    """A score for a data attribute: the shortest text of its float32 value (the Parquet type),
    so that the page's filter and `--min-score` (compared in float32) agree that 0.9 >= 0.9."""
    if score is None or math.isnan(score):  # no score: never filtered out
        return "1"
    return str(np.float32(score))


def mark(text: str, span: Highlight, labels: Labels, offset: int = 0) -> str:
    """One entity: its text (the mark's whole text content), the label drawn after it by CSS
    (`::after`, so it is not part of the text), the score in `title`."""
    score = "" if span.score is None else f"{span.score:.3f}"
    title = " ".join(
        part
        for part in (span.label, score, f"[{span.start + offset}, {span.end + offset})")
        if part
    )
    attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in span.extra.items())
    classes = f"e {labels.css_class(span.label)} {span.css}".strip()
    return (
        f'<mark class="{classes}" data-label="{esc(span.label)}"'
        f' data-score="{score_value(span.score)}"{attrs} title="{esc(title)}">'
        f"{esc(text[span.start : span.end])}</mark>"
    )


def highlight(
    text: str, spans: Sequence[Highlight], labels: Labels, start: int = 0, end: int | None = None
) -> str:
    """HTML of text[start:end] with `spans` (drawable: in order, not overlapping, inside that
    range) marked; everything else escaped as text."""
    end = len(text) if end is None else end
    parts, position = [], start
    for span in spans:
        parts.append(esc(text[position : span.start]))
        parts.append(mark(text, span, labels))
        position = span.end
    parts.append(esc(text[position:end]))
    return "".join(parts)


def _is_joiner(char: str) -> bool:
    """A character that belongs to the one before it: a combining mark, a variation selector, a
    zero-width joiner, an emoji modifier."""
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me")
        or char in "\u200d\ufe0e\ufe0f"
        or "\U0001f3fb" <= char <= "\U0001f3ff"
        or "\U000e0020" <= char <= "\U000e007f"
    )


def _snap_start(text: str, start: int, reach: int = 40) -> int:
    """Move a window start back to a word boundary (within `reach`), never inside a cluster."""
    for i in range(start, max(0, start - reach) - 1, -1):
        if i == 0 or text[i - 1].isspace():
            start = i
            break
    while 0 < start < len(text) and (_is_joiner(text[start]) or text[start - 1] == "\u200d"):
        start -= 1
    if 0 < start < len(text) and text[start - 1] == "\r" and text[start] == "\n":
        start -= 1
    return start


def _snap_end(text: str, end: int, reach: int = 40) -> int:
    """Move a window end forward to a word boundary (within `reach`), never inside a cluster."""
    for i in range(end, min(len(text), end + reach) + 1):
        if i == len(text) or text[i].isspace():
            end = i
            break
    while 0 < end < len(text) and (_is_joiner(text[end]) or text[end - 1] == "\u200d"):
        end += 1
    if 0 < end < len(text) and text[end - 1] == "\r" and text[end] == "\n":
        end += 1
    return end


def windows(
    text: str, spans: Sequence[Highlight], context: int = 160, budget: int = 6000
) -> tuple[list[tuple[int, int]], int]:
    """Ranges of `text` around the (drawable, ordered) spans: `context` characters on each side,
    moved out to word boundaries, overlapping ones merged, until about `budget` characters are
    shown. Returns (ranges, number of spans left out). A span is never cut."""
    ranges: list[list[int]] = []
    shown = 0
    for index, span in enumerate(spans):
        begin = _snap_start(text, max(0, span.start - context))
        finish = _snap_end(text, min(len(text), span.end + context))
        if ranges and begin <= ranges[-1][1]:
            shown += max(0, finish - ranges[-1][1])
            ranges[-1][1] = max(ranges[-1][1], finish)
        else:
            if ranges and shown + (finish - begin) > budget:
                return [tuple(r) for r in ranges], len(spans) - index
            ranges.append([begin, finish])
            shown += finish - begin
    return [tuple(r) for r in ranges], 0


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values from low to high."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    colours: dict[str, str] | None = None,
    width: int = 540,
    height: int = 280,
) -> str:
    """An inline SVG line chart: one polyline with dots per series, axes with round ticks and a
    legend. Points whose y is None are skipped."""
    points = {
        name: [(float(x), float(y)) for x, y in values if x is not None and y is not None]
        for name, values in series.items()
    }
    every = [p for values in points.values() for p in values]
    if not every:
        return ""
    left, right, top, bottom = 56, 130, 30, 42
    xs, ys = [x for x, _ in every], [y for _, y in every]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_ticks = _ticks(min(ys), max(ys))
    y_low, y_high = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))
    if y_high == y_low:
        y_low, y_high = y_low - 1, y_high + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    palette = iter(("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563"))
    colours = dict(colours or {})
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" class="chart">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600">{esc(title)}</text>',
    ]
    for y in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{y:g}</text>"
        )
    for x in _ticks(x_low, x_high, min(8, max(1, len(set(xs)) - 1))):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 16}" font-size="11" '
            f'text-anchor="middle">{x:g}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#6b7280"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#6b7280"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="12" '
        f'text-anchor="middle">{esc(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{esc(y_label)}</text>'
    )
    for index, (name, values) in enumerate(points.items()):
        colour = colours.setdefault(name, next(palette, "#111827"))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
            f"<title>{esc(name)}: {x:g}, {y:.4g}</title></circle>"
            for x, y in values
        ]
        legend_y = top + 6 + 18 * index
        parts.append(
            f'<line x1="{left + plot_w + 14}" x2="{left + plot_w + 32}" y1="{legend_y}" '
            f'y2="{legend_y}" stroke="{colour}" stroke-width="3"/>'
            f'<text x="{left + plot_w + 38}" y="{legend_y + 4}" font-size="12">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar(fraction: float, colour: str = "#7aa7e0") -> str:
    """A horizontal bar for a table cell (0 <= fraction <= 1)."""
    width = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<span class="track"><span class="bar" style="width:{width:.1f}%;background:{colour}">'
        "</span></span>"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """An HTML table; header cells are escaped here, row cells must be HTML already."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
:root{color-scheme:light;--fg:#1d2330;--muted:#5d6675;--line:#dde2ea;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
header.top{background:#1f2937;color:#f3f4f6;padding:14px 28px}
header.top h1{margin:0;font-size:20px;font-weight:600}
header.top .sub{color:#cbd5e1;font-size:13px;overflow-wrap:anywhere}
main{max-width:1240px;margin:0 auto;padding:12px 28px 48px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:16px 0;
padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px}
h3{font-size:15px;margin:10px 0 6px}
table{border-collapse:collapse;font-size:13.5px;margin:4px 0 8px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px 3px 4px;text-align:left;
vertical-align:top}
th{color:var(--muted);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.w{min-width:120px}
.nowrap{white-space:nowrap}
.track{display:inline-block;width:90px;height:10px;background:#eef0f4;border-radius:2px;
vertical-align:middle;margin-right:6px}
.bar{display:block;height:10px;border-radius:2px}
details summary{cursor:pointer;color:var(--muted);margin:6px 0}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:0 16px}
.cols>section{margin:8px 0}
.muted{color:var(--muted)}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px;font-size:14px}
.kv3{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:0 24px}
.kv dt{color:var(--muted)}.kv dd{margin:0;overflow-wrap:anywhere}
.grid{display:flex;flex-wrap:wrap;gap:10px 28px}
.problems{border-color:#e3a008;background:#fffbeb}
.problems li{margin:2px 0;overflow-wrap:anywhere}
.chip{background:var(--c);border-radius:4px;padding:0 6px;font-size:12px;font-weight:600}
mark.e{background:var(--c);color:#111;border-radius:4px;padding:1px 3px;
box-decoration-break:clone;-webkit-box-decoration-break:clone;unicode-bidi:isolate}
mark.e::after{content:attr(data-label);font-size:10.5px;font-weight:700;letter-spacing:.03em;
margin-left:4px;padding:0 3px;border-radius:3px;background:rgba(0,0,0,.13);color:#222;
vertical-align:1px;unicode-bidi:isolate}
mark.e.off{background:none;padding:0}
mark.e.off::after{display:none}
mark.e.hit{outline:2px solid #d97706}
mark.e.focus{outline:2px solid #b91c1c;outline-offset:1px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.9;unicode-bidi:plaintext;
font-size:15.5px}
.gap{color:var(--muted);background:#eef0f4;border-radius:3px;padding:0 5px;margin:0 3px;
white-space:nowrap}
"""


def page(title: str, subtitle: str, body: str, script: str | None = None, style: str = "") -> str:
    """A whole HTML document: title, a header, `body` (HTML), inline CSS and the one script."""
    if script is None:
        script_src = "'none'"
        script_tag = ""
    else:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        script_src = f"'sha256-{digest}'"
        script_tag = f"<script>{script}</script>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP.format(script=script_src)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}{style}</style></head>\n"
        f'<body><header class="top"><h1>{esc(title)}</h1>'
        f'<div class="sub">{esc(subtitle)}</div></header>\n'
        f"<main>{body}</main>\n{script_tag}</body></html>\n"
    )
