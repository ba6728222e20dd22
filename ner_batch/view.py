"""`nerbatch view`: an annotate output as one HTML page that a person reads.

The page (one self-contained file) shows the run (counts, rejects and their reasons, spans per
label, speed, bundle, options: from `_manifest.json` and `_rejects/`), the most frequent entities
per label, and a seeded sample of documents with every entity highlighted, with filters by
label, minimum score and text that run in the page.

`build_view` reads the manifest, then hands the work to three modules, data apart from rendering
(as displaCy's `parse_ents` is apart from its renderer):
- view_scan.py: one streamed pass over five columns of the parts (counts, score histograms,
  frequent entities, the seeded sample), then the rows of the sampled documents only;
- view_inputs.py: the input files that hold the sampled documents, re-read with annotate's
  readers up to their last sampled document, and the rejects by reason;
- view_page.py: the HTML, from those results and the run's facts (`RunFacts`, taken from the
  manifest here) only: it touches no file.
So a 1 GB output takes seconds and flat memory.

It does not tag, score or change the output. A missing or changed input, a document not found
in its input, and spans that cannot be drawn (out of range, overlapping, not matching the text)
are listed on the page, never a crash.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import OutputError
from .manifest import Manifest, read_manifest
from .output import MANIFEST, SUCCESS, OutputDir
from .storage import write_file
from .view_inputs import input_problems, input_rows, read_texts, reject_summary
from .view_page import RunFacts, render_view
from .view_scan import Scan, ViewOptions, read_sample_rows, scan

__all__ = ["ViewOptions", "build_view", "view"]


def _open_output(output: str | Path) -> tuple[OutputDir, Manifest, list[str], list[str]]:
    """(output, its manifest, the parts it names that exist, those that are missing)."""
    out = OutputDir(output)
    if not out.exists():
        raise OutputError(f"{out} does not exist")
    manifest = read_manifest(out)
    if manifest is None:
        raise OutputError(f"{out} is not an annotate output (no {MANIFEST})")
    parts = [p.file for p in manifest.parts]
    missing = [p for p in parts if not out.exists(p)]
    return out, manifest, [p for p in parts if p not in missing], missing


def _run_facts(out: OutputDir, manifest: Manifest, complete: bool) -> RunFacts:
    """What the page's Run section shows, from the manifest."""
    counts = manifest.counts
    summary = manifest.summary or {}
    files = manifest.files or {}
    settings = dict(manifest.settings)
    read = settings.pop("read", {})
    options = [
        (key, value)
        for key, value in {**manifest.options, **settings}.items()
        if key not in ("read",)
    ] + [(f"read.{key}", value) for key, value in read.items()]
    return RunFacts(
        location=str(out),
        complete=complete,
        parts=len(manifest.parts),
        inputs=len(manifest.inputs),
        documents=counts.documents,
        annotated=counts.annotated,
        rejected=counts.rejected,
        spans=counts.spans,
        tokens=counts.tokens,
        files_read=files.get("read", "-"),
        files_rejected=files.get("rejected", "-"),
        files_skipped=files.get("skipped", "-"),
        tokens_per_second=summary.get("tokens_per_second"),
        seconds=summary.get("seconds"),
        bundle_id=manifest.bundle_id or "-",
        bundle=manifest.bundle or "-",
        variant=manifest.variant or "-",
        runtime=manifest.runtime,
        device=manifest.device or "-",
        started=manifest.started or "-",
        finished=manifest.finished or "-",
        runs=manifest.runs,
        versions=manifest.versions,
        options=options,
    )


def _span_count_problems(manifest: Manifest, result: Scan, complete_read: bool) -> list[str]:
    """The manifest's count of spans against the rows the scan read (when it read every part)."""
    recorded = manifest.counts.spans
    if recorded != result.rows and complete_read:
        return [f"the manifest counts {recorded:,} spans, the parts hold {result.rows:,} rows"]
    return []


def build_view(output: str | Path, options: ViewOptions | None = None) -> tuple[str, dict]:
    """The page (HTML) for the annotate output at `output` and a summary of what it shows."""
    options = options or ViewOptions()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    out, manifest, parts, missing_parts = _open_output(output)
    complete = out.exists(SUCCESS)
    problems = [
        f"part {name} is named in the manifest but missing from the output"
        for name in missing_parts
    ]

    result = scan(out, parts, options)
    timings["scan"] = time.perf_counter() - started
    problems += result.errors
    problems += _span_count_problems(manifest, result, not missing_parts and not result.errors)
    rejects = reject_summary(out, manifest)
    problems += rejects.problems
    timings["rejects"] = time.perf_counter() - started - timings["scan"]

    mark = time.perf_counter()
    problems += read_sample_rows(out, parts, result.sample)
    timings["sample_rows"] = time.perf_counter() - mark
    mark = time.perf_counter()
    statuses = read_texts(manifest, result.sample, options.inputs)
    timings["inputs"] = time.perf_counter() - mark
    problems += input_problems(statuses, result.sample)

    mark = time.perf_counter()
    run = _run_facts(out, manifest, complete)
    html_text, undrawn = render_view(run, result, rejects, input_rows(statuses), options, problems)
    problems += undrawn
    timings["render"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    summary = {
        "output": str(out),
        "documents": result.documents,
        "matching": result.matching,
        "sampled": len(result.sample),
        "shown_with_text": sum(1 for d in result.sample if d.text is not None),
        "spans": result.rows,
        "labels": dict(result.label_counts),
        "approximate": result.approximate,
        "problems": problems,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    return html_text, summary


def view(
    output: str | Path,
    html_path: str | Path = "view.html",
    options: ViewOptions | None = None,
) -> dict:
    """Write the HTML page of the annotate output at `output` to `html_path` (a local path or a
    URI); returns a summary (documents sampled, problems, seconds per phase)."""
    html_text, summary = build_view(output, options)
    write_file(html_path, html_text)
    summary["html"] = str(html_path)
    return summary
