"""The data of `nerbatch view` from what the manifest records besides the parts: the inputs, whose
sampled documents are re-read for their text, and the rejects, summarised by reason.

Each input that holds a sampled document is found at its recorded path or, when the inputs moved,
among the files given with `--inputs` by the longest common path suffix; it is re-read with
annotate's readers and the read options the manifest records, only up to its last sampled
document, and cut at its recorded size when it was appended to since. So the offsets point into
exactly the characters annotate tagged.

It does not scan the parts (view_scan.py) and writes no HTML (view_page.py). A missing, moved,
changed or unreadable input and a document not found in its input are noted on the status or the
document for the page to list, never raised.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.compute as pc

from .errors import NerbatchError
from .manifest import Manifest
from .output import REJECTS, OutputDir
from .readers import InputFile, ReadOptions, Reject, expand_inputs, printable, read_file
from .view_scan import UNREADABLE, SampledDoc, open_part

# --- locating the inputs -------------------------------------------------------------------------


@dataclass
class InputStatus:
    """Where a recorded input is now, and what the page says about it."""

    recorded: dict | None
    file: InputFile | None = None
    note: str | None = None  # missing, moved, changed
    problem: bool = False


def _path_parts(path: str) -> list[str]:
    return [p for p in re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", path).split("/") if p]


def _common_suffix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def locate_inputs(
    manifest: Manifest, sources: Sequence[str], overrides: Sequence[str]
) -> dict[str, InputStatus]:
    """For each `source` (of the sampled documents): the input file to re-read, found at its
    recorded path or, with `overrides`, among those files by the longest common path suffix."""
    recorded = {}
    for index, item in enumerate(manifest.inputs):
        # `source` holds the readers' printable form of the path
        recorded.setdefault(printable(item["path"]), (index, item))
    moved, override_error = _expand_overrides(overrides)
    found: dict[str, InputStatus] = {}
    for source in sources:
        if source not in recorded:
            found[source] = InputStatus(
                None, note="not among the inputs the manifest records", problem=True
            )
            continue
        index, item = recorded[source]
        status = InputStatus(dict(item, index=index))
        found[source] = status
        if overrides and override_error:
            status.note, status.problem = f"--inputs: {override_error}", True
            continue
        file = _moved_file(item, moved, status) if overrides else _recorded_file(item, status)
        if file is None:
            continue
        if file.error:
            status.note, status.problem = f"unreadable: {file.error}", True
            continue
        status.file = _as_read(file, item, status)
    return found


def _expand_overrides(overrides: Sequence[str]) -> tuple[list[InputFile], str | None]:
    """(the readable files under `overrides`, or why they cannot be listed)."""
    if not overrides:
        return [], None
    try:
        return [f for f in expand_inputs(list(overrides))[0] if not f.error], None
    except NerbatchError as e:
        return [], str(e)


def _moved_file(item: dict, moved: list[InputFile], status: InputStatus) -> InputFile | None:
    """The file of `moved` whose path ends most like the recorded one (None: no such file)."""
    wanted = _path_parts(item["path"])
    scored = sorted(
        ((_common_suffix(wanted, _path_parts(f.path)), f) for f in moved),
        key=lambda pair: -pair[0],
    )
    if not scored or scored[0][0] == 0:
        status.note = "missing: no file of that name under --inputs"
        status.problem = True
        return None
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        status.note = (
            f"ambiguous under --inputs ({scored[0][1].display}, {scored[1][1].display}, "
            "...): the first is used"
        )
        status.problem = True
    file = scored[0][1]
    status.note = status.note or f"moved: read from {file.display}"
    return file


def _recorded_file(item: dict, status: InputStatus) -> InputFile | None:
    """The file at the recorded path (None: it is gone)."""
    try:
        files = expand_inputs([item["path"]])[0]
    except NerbatchError as e:
        status.note, status.problem = f"missing: {e}", True
        return None
    return files[0]


def _as_read(file: InputFile, item: dict, status: InputStatus) -> InputFile:
    """`file` as annotate read it: a local file appended to since is cut at its recorded size.
    A local file that changed is noted on `status`."""
    if file.remote is None and 0 <= item.get("size", -1) <= file.size:
        if file.size != item["size"] or file.mtime != item.get("mtime"):
            status.note = (status.note + "; " if status.note else "") + (
                f"changed since the run (size {item['size']} -> {file.size} bytes, or its "
                "mtime): highlights are checked against the recorded span texts"
            )
            status.problem = True
        file = dataclasses.replace(file, size=item["size"])
    elif file.remote is None and file.size != item.get("size"):
        status.note = (status.note + "; " if status.note else "") + (
            f"changed since the run (size {item.get('size')} -> {file.size} bytes, smaller): "
            "highlights are checked against the recorded span texts"
        )
        status.problem = True
    return file


# --- re-reading the texts ------------------------------------------------------------------------


def _read_options(manifest: Manifest) -> ReadOptions:
    recorded = manifest.settings.get("read", {})
    known = {f.name for f in dataclasses.fields(ReadOptions)}
    return ReadOptions(**{k: v for k, v in recorded.items() if k in known})


def _moved_id(doc_id: str, old: str, new: str) -> str:
    """A default id (`<file>` or `<file>:<n>`) of an input that moved from `old` to `new`."""
    if old == new:
        return doc_id
    if doc_id == old:
        return new
    rest = doc_id[len(old) :]
    if doc_id.startswith(old) and rest[:1] == ":" and rest[1:].isdigit():
        return new + rest
    return doc_id


def read_texts(
    manifest: Manifest, sample: Sequence[SampledDoc], overrides: Sequence[str]
) -> dict[str, InputStatus]:
    """Set `text` (or `note`) on every sampled document, re-reading each input that holds one
    up to its last sampled document. Returns the status of those inputs."""
    by_source: dict[str, list[SampledDoc]] = {}
    for doc in sample:
        by_source.setdefault(doc.source, []).append(doc)
    statuses = locate_inputs(manifest, list(by_source), overrides)
    options = _read_options(manifest)
    order = sorted(by_source, key=lambda s: (statuses[s].recorded or {}).get("index", 1 << 62))
    for source in order:
        status, docs = statuses[source], by_source[source]
        if status.file is None:
            for doc in docs:
                doc.note = f"input {status.note}"
            continue
        wanted: dict[str, list[SampledDoc]] = {}
        for doc in docs:
            wanted.setdefault(_moved_id(doc.doc_id, source, status.file.display), []).append(doc)
        unreadable = None
        position = 0
        try:
            for item in read_file(status.file, options):
                position += 1
                if isinstance(item, Reject):
                    if item.doc_id is None:
                        unreadable = item.reason
                    continue
                waiting = wanted.pop(item.doc_id, None)
                for doc in waiting or ():
                    doc.text = item.text
                    doc.order = (status.recorded["index"], position)
                if not wanted:
                    break  # the rest of the file holds no sampled document
        except NerbatchError as e:  # e.g. a Parquet input without the text column
            unreadable = str(e)
        for docs_left in wanted.values():
            for doc in docs_left:
                doc.note = f"not found in {status.file.display}" + (
                    f" ({unreadable})" if unreadable else " (did the input change?)"
                )
    return statuses


def input_problems(statuses: dict[str, InputStatus], sample: Sequence[SampledDoc]) -> list[str]:
    """The inputs that are missing, moved or changed, then the documents of an input that was
    found but that are not in it (an input's own problem is listed once, not per document)."""
    problems = [
        f"input {source}: {status.note}" for source, status in statuses.items() if status.problem
    ]
    for doc in sample:
        if doc.text is None and doc.source in statuses and statuses[doc.source].file is not None:
            problems.append(f"document {doc.doc_id}: {doc.note}")
    return problems


def input_rows(statuses: dict[str, InputStatus]) -> list[tuple[str, int | None, str | None]]:
    """(source, its size in bytes at the run, its note) of each input re-read, in the run's order
    of the inputs."""
    ordered = sorted(statuses.items(), key=lambda kv: (kv[1].recorded or {}).get("index", 1 << 62))
    return [
        (source, (status.recorded or {}).get("size"), status.note) for source, status in ordered
    ]


# --- rejects -------------------------------------------------------------------------------------


@dataclass
class RejectSummary:
    """The rejects of the run, grouped by reason."""

    # (reason with numbers as N, count, example source, doc_id, line, reason), most frequent first
    kinds: list[tuple]
    rows: int  # in the `_rejects/` files
    recorded: int  # rejected documents, as the manifest counts them
    problems: list[str]  # rejects files missing or unreadable, counts that disagree


def reject_summary(out: OutputDir, manifest: Manifest) -> RejectSummary:
    """The rejects, from the `_rejects/` files the manifest names (one per part: at most a part's
    documents each, so each is read whole)."""
    kinds: dict[str, list] = {}
    rows = 0
    problems: list[str] = []
    files = manifest.rejects_files()
    for name in files:
        if not out.exists(name):
            problems.append(f"{name} is named in the manifest but missing from the output")
            continue
        try:
            table = open_part(out, name).read(columns=["source", "doc_id", "line", "reason"])
        except UNREADABLE as e:
            problems.append(f"{name} is unreadable ({e})")
            continue
        rows += table.num_rows
        kind = pc.replace_substring_regex(pc.fill_null(table["reason"], ""), r"\d+", "N")
        grouped = (
            table.append_column("kind", kind)
            .group_by("kind", use_threads=False)
            .aggregate(
                [
                    ([], "count_all"),
                    ("source", "first"),
                    ("doc_id", "first"),
                    ("line", "first"),
                    ("reason", "first"),
                ]
            )
        )
        for record in grouped.to_pylist():
            entry = kinds.setdefault(
                record["kind"],
                [
                    record["kind"],
                    0,
                    record["source_first"],
                    record["doc_id_first"],
                    record["line_first"],
                    record["reason_first"],
                ],
            )
            entry[1] += record["count_all"]
    ordered = sorted((tuple(v) for v in kinds.values()), key=lambda v: (-v[1], v[0]))
    rejected = manifest.counts.rejected
    if rows != rejected:
        problems.append(
            f"the manifest counts {rejected:,} rejected documents, {REJECTS}/ holds {rows:,} rows"
        )
    return RejectSummary(ordered, rows, rejected, problems)
