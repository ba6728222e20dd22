"""`_manifest.json`, the annotate output's record of itself, as a typed `Manifest`.

It names the committed parts (and their rejects), counts what they hold, binds the output to its
bundle, settings and inputs, and records where in the input stream the committed documents end
(`position`), so that a resumed run starts reading there. run.py's Committer updates it at
every commit; plan.py reads it to resume; view.py shows it.

Every manifest is read through `Manifest.from_json`, which applies once the defaults of outputs
written by older versions (format 1: no `runtime` before nerbatch 0.3, no batching settings,
device or engine before 0.2), so no reader needs to know them. Format history:
- `nerbatch-annotate/1` (nerbatch 0.1-0.3): read and resumed; rewritten as format 2.
- `nerbatch-annotate/2` (0.4): the same fields, the package's real version in `versions`.
Deliberately not here: where the manifest is stored (output.py's OutputDir) and when it is
written (run.py's Committer, plan.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

from .errors import OutputError
from .output import MANIFEST, OutputDir

MANIFEST_FORMAT = "nerbatch-annotate/2"
READABLE_FORMATS = ("nerbatch-annotate/1", MANIFEST_FORMAT)

# Settings that outputs of nerbatch 0.1 did not record: such an output resumes with whatever
# the resuming run uses (0.1 did not keep int8 batches across a resume either); then they are
# recorded. `runtime`: ONNX Runtime was the only one before 0.3.
UNRECORDED_BEFORE_0_2 = (
    "batch_size",
    "max_batch_tokens",
    "chunk_docs",
    "chunk_chars",
    "part_docs",
    "device",
    "engine",
)
RUNTIME_BEFORE_0_3 = "onnxruntime"
# Words took their argmax label before 0.5 (`--decode`).
DECODE_BEFORE_0_5 = "argmax"


@dataclass
class Counts:
    """Documents (read from the inputs), of which annotated and rejected; spans and sub-tokens."""

    documents: int = 0
    annotated: int = 0
    rejected: int = 0
    spans: int = 0
    tokens: int = 0

    def add(self, other: Counts) -> None:
        for name in ("documents", "annotated", "rejected", "spans", "tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Part:
    """A committed part: its file, its rejects' file (if any), its rows and what it holds."""

    file: str
    rejects_file: str | None
    rows: int
    documents: int
    annotated: int
    rejected: int
    spans: int
    tokens: int


@dataclass
class Position:
    """Where the committed documents end in the input stream: input `input` has been read
    through its `items`-th item, and `documents_done` documents are committed."""

    documents_done: int
    input: int
    items: int


@dataclass
class Manifest:
    bundle_id: str = ""
    bundle: str = ""
    variant: str = ""
    device: str = ""
    settings: dict = field(default_factory=dict)  # what the output is bound to (plan.py)
    inputs: list[dict] = field(default_factory=list)  # path, size, mtime; in stream order
    runtime_choice: dict | None = None  # what --runtime chose and why (probe.py)
    # Local inputs only: whether an input that later grew or was touched still holds these bytes.
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # the run's options as given
    files: dict | None = None  # read, rejected, skipped
    parts: list[Part] = field(default_factory=list)
    documents_done: int = 0
    counts: Counts = field(default_factory=Counts)
    position: Position | None = None
    complete: bool = False
    versions: dict = field(default_factory=dict)
    started: str | None = None
    updated: str | None = None
    finished: str | None = None
    runs: int = 0
    summary: dict | None = None  # of the run that completed it
    rejects: str | None = None  # the rejects directory, once complete, if any document was
    format: str = MANIFEST_FORMAT

    @property
    def runtime(self) -> str:
        return self.settings["runtime"]

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST) -> Manifest:
        """A manifest of any readable format, with the defaults of older versions applied."""
        found = data.get("format") if isinstance(data, dict) else None
        if found not in READABLE_FORMATS:
            raise OutputError(
                f"{where} has format {found!r}, not {MANIFEST_FORMAT!r}: it was not written "
                "by this version of nerbatch annotate; use --overwrite to start over"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["settings"] = dict(values.get("settings") or {})
            values["settings"].setdefault("runtime", RUNTIME_BEFORE_0_3)
            values["settings"].setdefault("decode", DECODE_BEFORE_0_5)
            values["parts"] = [Part(**p) for p in values.get("parts", [])]
            values["counts"] = Counts(**values.get("counts", {}))
            if values.get("position"):
                values["position"] = Position(**values["position"])
            values["format"] = MANIFEST_FORMAT  # rewritten in this format from now on
            return cls(**values)
        except (TypeError, ValueError) as e:  # a field missing or of another shape
            raise OutputError(f"{where} is damaged ({e}); use --overwrite to start over") from e

    def to_json(self) -> dict:
        return asdict(self)

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode()

    def recorded_settings(self, current: dict) -> dict:
        """The settings this output is bound to; those an output of nerbatch 0.1 did not record
        are taken from `current` (the resuming run's)."""
        recorded = dict(self.settings)
        for key in UNRECORDED_BEFORE_0_2:
            if key in current:
                recorded.setdefault(key, current[key])
        return recorded

    def rejects_files(self) -> list[str]:
        return [p.rejects_file for p in self.parts if p.rejects_file]


def loads(data: bytes, where: str = MANIFEST) -> Manifest:
    """Parse a manifest's bytes (OutputError when they are not JSON of a readable format)."""
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise OutputError(f"{where} is unreadable ({e}); use --overwrite to start over") from e
    return Manifest.from_json(parsed, where)


def read_manifest(out: OutputDir) -> Manifest | None:
    """The output's manifest, None if it has none; refuses one that is unreadable or of a format
    this version does not read (READABLE_FORMATS)."""
    where = out.uri(MANIFEST)
    try:
        data = out.read_bytes(MANIFEST)
    except OSError as e:
        raise OutputError(f"{where} is unreadable ({e}); use --overwrite to start over") from e
    return None if data is None else loads(data, where)


def write_manifest(out: OutputDir, manifest: Manifest) -> None:
    out.write_bytes(MANIFEST, manifest.dumps())
