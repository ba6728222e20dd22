"""The HTML of `nerbatch view`: the page's sections, its script and its style, from plain data.

`render_view` turns what view_scan.py and view_inputs.py found (a `Scan`, its sampled documents
with their texts, the rejects, the inputs re-read) and the run's facts taken from the manifest
(`RunFacts`, filled by view.py) into one self-contained page, built with page.py: the run, the
entities per label, the rejects, the sample with every entity highlighted and filters that run in
the page, the most frequent entities, the inputs, and the problems found on the way.

Pure functions of their arguments, as displaCy's renderer is of `parse_ents`'s output: it opens
no file, reads no output or manifest and does not write the page (view.py does). Spans that
cannot be drawn are returned as problems, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .page import BIDI_CONTROLS, Highlight, Labels, bar, check_spans, esc, highlight, page, table
from .page import windows as context_windows

if TYPE_CHECKING:
    from .view_inputs import RejectSummary
    from .view_scan import SampledDoc, Scan, ViewOptions

MAX_PROBLEMS_SHOWN = 200

SCRIPT = """(function () {
  "use strict";
  var boxes = Array.prototype.slice.call(document.querySelectorAll("input.lab"));
  var min = document.getElementById("min");
  var minValue = document.getElementById("min-value");
  var query = document.getElementById("q");
  var status = document.getElementById("status");
  var docs = Array.prototype.slice.call(document.querySelectorAll("article.doc"));
  var lower = new Map();
  function apply() {
    var on = {}, narrowed = false;
    boxes.forEach(function (b) {
      if (b.checked) { on[b.value] = true; } else { narrowed = true; }
    });
    var least = parseFloat(min.value) || 0;
    if (least > 0) { narrowed = true; }
    minValue.textContent = least.toFixed(2);
    var needle = query.value.trim().toLowerCase();
    var shownDocs = 0, shownEntities = 0;
    docs.forEach(function (doc) {
      var count = 0;
      doc.querySelectorAll("mark.e").forEach(function (e) {
        var visible = on[e.dataset.label] === true && parseFloat(e.dataset.score) >= least;
        e.classList.toggle("off", !visible);
        e.classList.toggle("hit", visible && needle !== "" &&
          e.textContent.toLowerCase().indexOf(needle) >= 0);
        if (visible) { count += 1; }
      });
      if (!lower.has(doc)) { lower.set(doc, doc.textContent.toLowerCase()); }
      var found = needle === "" || lower.get(doc).indexOf(needle) >= 0;
      var shown = found && (count > 0 || !narrowed);
      doc.classList.toggle("hidden", !shown);
      if (shown) { shownDocs += 1; shownEntities += count; }
    });
    status.textContent = "showing " + shownDocs + " of " + docs.length + " documents, " +
      shownEntities + " entities";
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.has("label")) {
      var wanted = params.get("label").split(",");
      boxes.forEach(function (b) { b.checked = wanted.indexOf(b.value) >= 0; });
    }
    if (params.has("min")) { min.value = params.get("min"); }
    if (params.has("q")) { query.value = params.get("q"); }
    apply();
  }
  boxes.forEach(function (b) { b.addEventListener("change", apply); });
  min.addEventListener("input", apply);
  query.addEventListener("input", apply);
  document.getElementById("all").addEventListener("click", function () {
    boxes.forEach(function (b) { b.checked = true; });
    apply();
  });
  document.getElementById("none").addEventListener("click", function () {
    boxes.forEach(function (b) { b.checked = false; });
    apply();
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""

VIEW_STYLE = """
.controls{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:center;position:sticky;top:0;
background:#fff;padding:8px 0;border-bottom:1px solid var(--line);z-index:1}
.controls label{white-space:nowrap;cursor:pointer}
.controls input[type=search]{font:inherit;padding:2px 6px;width:220px}
.controls button{font:inherit;font-size:12px;padding:1px 8px}
#status{color:var(--muted);font-size:13px}
article.doc{border-top:1px solid var(--line);padding:10px 0 12px}
article.doc.hidden{display:none}
.dh{font-size:13px;margin-bottom:4px;overflow-wrap:anywhere}
.dh .id{font-weight:600}
.note{color:#92400e;font-size:13px}
.hist{display:inline-flex;align-items:flex-end;gap:1px;height:20px;vertical-align:middle}
.hist span{width:6px;background:#7aa7e0;display:inline-block}
.freq table{min-width:230px}
.freq td.t{max-width:320px;overflow-wrap:anywhere}
"""


def _number(value) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else esc(value)


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _kv(items: Sequence[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass
class RunFacts:
    """What the Run section shows: the manifest's values as recorded (view.py takes them out;
    None or "-" where the manifest has none)."""

    location: str  # the output
    complete: bool  # it has _SUCCESS
    parts: int  # committed
    inputs: int  # input files recorded
    documents: object
    annotated: object
    rejected: object
    spans: object
    tokens: object
    files_read: object
    files_rejected: object
    files_skipped: object  # for their extension
    tokens_per_second: object
    seconds: object
    bundle_id: object
    bundle: object
    variant: object
    runtime: object
    device: object
    started: object
    finished: object
    runs: object
    versions: object  # shown as JSON
    options: list[tuple[str, object]]  # the run's options and settings (values shown as JSON)


def _run_section(run: RunFacts) -> str:
    state = (
        "complete"
        if run.complete
        else f"incomplete: {run.parts} parts committed so far (no _SUCCESS)"
    )
    columns = [
        [
            ("documents", _number(run.documents)),
            ("annotated", _number(run.annotated)),
            ("rejected", _number(run.rejected)),
            ("spans", _number(run.spans)),
            ("tokens", _number(run.tokens)),
            (
                "input files",
                esc(
                    f"{run.inputs} ({run.files_read} read, {run.files_rejected} rejected; "
                    f"{run.files_skipped} skipped for their extension)"
                ),
            ),
        ],
        [
            ("tokens per second", _number(run.tokens_per_second)),
            ("seconds", _number(run.seconds)),
            ("bundle id", esc(run.bundle_id)),
            ("bundle", esc(run.bundle)),
            ("variant", esc(run.variant)),
            ("runtime", esc(run.runtime)),
            ("device", esc(run.device)),
        ],
        [
            ("state", esc(state)),
            ("parts", _number(run.parts)),
            ("started", esc(run.started)),
            ("finished", esc(run.finished)),
            ("runs", _number(run.runs)),
            ("versions", esc(json.dumps(run.versions))),
        ],
    ]
    options = [(key, esc(json.dumps(value))) for key, value in run.options]
    return (
        f'<section><h2>Run</h2><p class="muted">{esc(run.location)}</p><div class="kv3">'
        + "".join(_kv(column) for column in columns)
        + "</div><details><summary>Options of the run</summary>"
        + _kv(options)
        + "</details></section>"
    )


def _labels_section(result: Scan, labels: Labels) -> str:
    total = sum(result.label_counts.values()) or 1
    rows = []
    for label, count in sorted(result.label_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        mean = result.label_score_sums[label] / count if count else math.nan
        hist = result.histograms[label]
        peak = hist.max() or 1
        bars = "".join(
            f'<span style="height:{max(1, round(20 * v / peak))}px" '
            f'title="{i / 10:.1f}-{(i + 1) / 10:.1f}: {v:,}"></span>'
            for i, v in enumerate(hist.tolist())
        )
        rows.append(
            [
                labels.chip(label),
                f"{count:,}",
                '<span class="nowrap">'
                + bar(count / total, labels.colour[label])
                + f"{100 * count / total:.1f}%</span>",
                f"{mean:.3f}",
                f'<span class="hist">{bars}</span>',
            ]
        )
    body = (
        table(["label", "spans", "share", "mean score", "scores 0 to 1"], rows)
        if rows
        else "<p>No entities.</p>"
    )
    return f"<section><h2>Entities per label</h2>{body}</section>"


def _rejects_section(rejects: list[tuple], rows: int, rejected: int) -> str:
    if not rejected and not rows:
        return (
            "<section><h2>Rejected documents</h2><p>None: every document was annotated.</p>"
            "</section>"
        )
    shown = rejects[:30]
    body = table(
        ["reason", "count", "example"],
        (
            [
                esc(kind),
                f"{count:,}",
                esc(
                    f"{source or '-'}"
                    + (f" · {doc_id}" if doc_id else "")
                    + (f" · line {line}" if line is not None else "")
                    + (f": {reason}" if reason != kind else "")
                ),
            ]
            for kind, count, source, doc_id, line, reason in shown
        ),
    )
    more = (
        f'<p class="muted">{len(rejects) - len(shown)} more reasons not shown.</p>'
        if len(rejects) > len(shown)
        else ""
    )
    return (
        f"<section><h2>Rejected documents ({rejected:,})</h2>"
        '<p class="muted">Numbers in the reasons are shown as N to group them; the example is '
        f"the first of each.</p>{body}{more}</section>"
    )


def _frequent_section(result: Scan, labels: Labels, wanted: Sequence[str]) -> str:
    tables = []
    for label in sorted(result.frequent, key=lambda lb: -result.label_counts.get(lb, 0)):
        if wanted and label not in wanted:
            continue
        rows = [
            [f'<span class="t">{esc(_short(text or ""))}</span>', f"{n:,}", f"{mean:.3f}"]
            for text, n, mean in result.frequent[label]
        ]
        tables.append(
            f"<div><h3>{labels.chip(label)}</h3>"
            + table(["text", "count", "mean score"], rows)
            + "</div>"
        )
    note = (
        f'<p class="note">Approximate: more than {result.distinct:,} distinct entity texts; '
        "the table was pruned to the most frequent per label along the way, so counts are lower "
        "bounds.</p>"
        if result.approximate
        else f'<p class="muted">Exact, over {result.rows:,} spans ({result.distinct:,} distinct '
        "label and text pairs).</p>"
    )
    return (
        '<section class="freq"><h2>Most frequent entities</h2>'
        + note
        + '<div class="grid">'
        + "".join(tables)
        + "</div></section>"
    )


def _document(
    index: int, doc: SampledDoc, labels: Labels, options: ViewOptions
) -> tuple[str, list[tuple[Highlight, str]]]:
    """HTML of one sampled document and the spans that cannot be drawn [(span, why)]."""
    if doc.text is None:
        return _document_without_text(index, doc, labels), []
    text = doc.text
    spans = [dataclasses.replace(s, extra={"start": s.start, "end": s.end}) for s in doc.spans]
    drawable, problems = check_spans(text, spans)
    details = [
        doc.source,
        _count(len(text), "character", "characters"),
        _count(len(drawable), "entity", "entities"),
    ]
    notes = []
    if BIDI_CONTROLS.search(text):
        notes.append("contains bidirectional control characters")
    if "\0" in text:
        notes.append("NUL characters shown as \u2400")
    if problems:
        notes.append(f"{len(problems)} spans not drawn (see Problems)")
    if len(text) > options.long_document:
        body_html, note = _excerpts(text, drawable, labels, options)
        notes.append(note)
    else:
        body_html = highlight(text, drawable, labels)
    header = [
        f'<span class="id">{esc(doc.doc_id)}</span>',
        f'<span class="muted">{esc(" · ".join(details))}</span>',
    ]
    if notes:
        header.append(f'<span class="note">{esc("; ".join(notes))}</span>')
    return (
        f'<article class="doc" data-doc="{index}" data-id="{esc(doc.doc_id)}">'
        f'<div class="dh">{" · ".join(header)}</div>'
        f'<div class="text" dir="auto">{body_html}</div></article>',
        problems,
    )


def _document_without_text(index: int, doc: SampledDoc, labels: Labels) -> str:
    """A document whose text could not be read again: its recorded entities, and why."""
    details = [doc.source, _count(len(doc.spans), "entity", "entities")]
    chips = " ".join(
        f"{labels.chip(s.label)} {esc(_short(s.surface or ''))}" for s in doc.spans[:50]
    )
    header = [
        f'<span class="id">{esc(doc.doc_id)}</span>',
        f'<span class="muted">{esc(" · ".join(details))}</span>',
    ]
    return (
        f'<article class="doc" data-doc="{index}" data-id="{esc(doc.doc_id)}">'
        f'<div class="dh">{" ".join(header)}</div>'
        f'<div class="note">Text not shown: {esc(doc.note or "unknown")}. The output '
        f"records these entities:</div><div>{chips}</div></article>"
    )


def _excerpts(
    text: str, drawable: list[Highlight], labels: Labels, options: ViewOptions
) -> tuple[str, str]:
    """A long document shown around its entities: (HTML, the note that says so)."""
    ranges, left_out = context_windows(text, drawable, options.context, options.budget)
    if not drawable:
        ranges = [(0, min(len(text), options.budget // 4))]
    pieces = []
    position = 0
    for begin, end in ranges:
        if begin > position:
            pieces.append(
                f'<span class="gap" title="characters {position:,} to {begin:,} not shown">'
                "\u2026</span>"
            )
        inside = [s for s in drawable if begin <= s.start and s.end <= end]
        pieces.append(highlight(text, inside, labels, begin, end))
        position = end
    if position < len(text):
        pieces.append(
            f'<span class="gap" title="characters {position:,} to {len(text):,} not shown">'
            "\u2026</span>"
        )
    note = (
        f"long document: shown around its entities ({len(ranges)} excerpts"
        + (f"; {left_out} more entities not shown" if left_out else "")
        + ")"
    )
    return "".join(pieces), note


def _sample_section(
    result: Scan, labels: Labels, options: ViewOptions, documents_html: list[str]
) -> str:
    wanted = set(options.labels)
    boxes = "".join(
        f'<label><input type="checkbox" class="lab" value="{esc(label)}"'
        f"{' checked' if not wanted or label in wanted else ''}> {labels.chip(label)}</label>"
        for label in labels.order
    )
    filters = []
    if options.labels:
        filters.append("label " + ", ".join(options.labels))
    if options.min_score > 0:
        filters.append(f"score at least {options.min_score:g}")
    if options.query:
        filters.append(f"entity text containing {options.query!r}")
    which = (
        f"{result.matching:,} documents with an entity matching {'; '.join(filters)}"
        if filters
        else f"{result.documents:,} documents with at least one entity"
    )
    controls = (
        '<div class="controls">'
        f'<span>{boxes} <button type="button" id="all">all</button>'
        '<button type="button" id="none">none</button></span>'
        f'<label>min score <input type="range" id="min" min="0" max="1" step="0.01" '
        f'value="{options.min_score:g}"> <output id="min-value">{options.min_score:.2f}</output>'
        "</label>"
        f'<label>search <input type="search" id="q" value="{esc(options.query or "")}" '
        'placeholder="text in the documents"></label><span id="status"></span></div>'
    )
    intro = (
        f'<p class="muted">{len(result.sample)} documents drawn at random (seed {options.seed}) '
        f"from the {which}. Hover over an entity for its score and offsets. Documents without "
        "entities are not in the sample.</p>"
    )
    body = "".join(documents_html) if documents_html else "<p>No documents to show.</p>"
    return f'<section id="sample"><h2>Sample</h2>{intro}{controls}{body}</section>'


def _problems_section(problems: list[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = (
        f"<li>... and {len(problems) - MAX_PROBLEMS_SHOWN} more</li>"
        if len(problems) > MAX_PROBLEMS_SHOWN
        else ""
    )
    return (
        f'<section class="problems"><h2>Problems ({len(problems)})</h2><ul>{items}{more}</ul>'
        "</section>"
    )


def _inputs_section(inputs: Sequence[tuple[str, int | None, str | None]], recorded: int) -> str:
    if not inputs:
        return ""
    rows = [[esc(source), _number(size), esc(note or "read")] for source, size, note in inputs]
    return (
        f'<section><h2>Inputs re-read</h2><p class="muted">{len(inputs)} of the '
        f"{recorded} input files hold the sampled documents; each was "
        "read up to its last sampled document with the read options of the run.</p>"
        + table(["input", "bytes at the run", "status"], rows)
        + "</section>"
    )


def _documents_html(
    sample: Sequence[SampledDoc], labels: Labels, options: ViewOptions
) -> tuple[list[str], list[str]]:
    """The HTML of each sampled document, and the spans that cannot be drawn."""
    documents_html = []
    problems = []
    for index, doc in enumerate(sample):
        html_text, doc_problems = _document(index, doc, labels, options)
        documents_html.append(html_text)
        for span, why in doc_problems:
            problems.append(
                f"document {doc.doc_id} ({doc.source}): {span.label} span [{span.start}, "
                f"{span.end}) {why}"
            )
    return documents_html, problems


def render_view(
    run: RunFacts,
    result: Scan,
    rejects: RejectSummary,
    inputs: Sequence[tuple[str, int | None, str | None]],
    options: ViewOptions,
    problems: Sequence[str],
) -> tuple[str, list[str]]:
    """The page, and the spans of the sample that cannot be drawn (listed on the page after
    `problems`, what the data modules found). `inputs`: (source, bytes at the run, note) of the
    inputs re-read, in the run's order."""
    sample = sorted(result.sample, key=lambda d: (d.order, d.key))
    labels = Labels(
        list(result.label_counts)
        + [s.label for d in sample for s in d.spans]
        + list(options.labels)
    )
    documents_html, undrawn = _documents_html(sample, labels, options)
    body = (
        _problems_section([*problems, *undrawn])
        + _run_section(run)
        + '<div class="cols">'
        + _labels_section(result, labels)
        + _rejects_section(rejects.kinds, rejects.rows, rejects.recorded)
        + "</div>"
        + _sample_section(result, labels, options, documents_html)
        + _frequent_section(result, labels, options.labels)
        + _inputs_section(inputs, run.inputs)
        + f'<p class="muted">Written by nerbatch {esc(__version__)} (nerbatch view).</p>'
    )
    html_text = page(
        f"nerbatch view: {Path(run.location).name or run.location}",
        run.location,
        body,
        script=SCRIPT,
        style=VIEW_STYLE + labels.css(),
    )
    return html_text, undrawn
