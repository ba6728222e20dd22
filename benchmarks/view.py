"""What `nerbatch view` costs on a large annotate output: seconds and peak memory.

Builds (once; kept in --work and reused) an annotate output of about --size-mb MB without any
model: JSONL input shards of generated news-like documents (names drawn from a Zipf-distributed
vocabulary per label, so that entity texts repeat as in real text), the Parquet parts of
SPAN_SCHEMA with the exact offsets of every entity in them (written directly, row groups of 65,536
rows as annotate writes them), `_rejects/` with a few rejects, and a manifest of annotate's
format. Then it runs `nerbatch view` on it in a child process per configuration and prints one
table row each: output size, spans, documents, seconds (total and per phase) and the child's peak
RSS (VmHWM), plus the RSS of a child that only imports the module (the floor).

    python benchmarks/view.py                      # ~1 GB output (first run builds it: minutes)
    python benchmarks/view.py --size-mb 50         # a quick one
    python benchmarks/view.py --shards 1           # every document in one input file: the
                                                   # sample's re-reading is then the cost
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parents[1]))

from ner_batch.manifest import MANIFEST_FORMAT  # noqa: E402
from ner_batch.output import SPAN_SCHEMA  # noqa: E402

LABELS = ("PER", "ORG", "LOC", "MISC")
FILLER = (  # noqa: SIM905 (a sentence of words reads better than a list)
    "the a of in on at to and said says met visited from with for by is was will new "
    "government minister company market shares percent year week talks officials told "
    "reporters city police team match season first second group bank prices on Monday"
).split()
SYLLABLES = "ka lo mi ne ra so tu vi be da fe go hi ju ke la mo nu pa qi re si to wa ye zo"
SYLLABLES = SYLLABLES.split()
PART_DOCS = 20_000
BUNDLE_ID = "benchmark-0000000000000000"


def vocabulary(rng: np.random.Generator, size: int) -> dict[str, list[str]]:
    """Names per label: 1-3 capitalised words of 2-4 syllables."""
    names = {}
    for label in LABELS:
        found: set[str] = set()
        while len(found) < size:
            words = [
                "".join(rng.choice(SYLLABLES, rng.integers(2, 5))).capitalize()
                for _ in range(rng.integers(1, 4))
            ]
            found.add(" ".join(words))
        names[label] = sorted(found)
    return names


def zipf_indices(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return (rng.zipf(1.3, n) - 1) % size


def write_shard(
    rng: np.random.Generator,
    names: dict[str, list[str]],
    inputs: Path,
    out: Path,
    shard: int,
    first_doc: int,
    documents: int,
) -> tuple[dict, dict]:
    """One JSONL shard and its part; returns (the input's manifest record, the part's)."""
    source = str(inputs / f"shard-{shard:05d}.jsonl")
    columns = {name: [] for name in SPAN_SCHEMA.names}
    lines = []
    tokens = 0
    vocab_size = len(names[LABELS[0]])
    for d in range(documents):
        doc_id = f"doc-{first_doc + d:08d}"
        n_entities = int(rng.integers(5, 60))
        labels = rng.integers(0, len(LABELS), n_entities)
        picks = zipf_indices(rng, n_entities, vocab_size)
        gaps = rng.integers(2, 9, n_entities + 1)
        fillers = rng.integers(0, len(FILLER), int(gaps.sum()))
        scores = rng.beta(8, 1.5, n_entities).astype(np.float32)
        pieces, position, f = [], 0, 0
        for e in range(n_entities):
            words = " ".join(FILLER[i] for i in fillers[f : f + gaps[e]]) + " "
            f += gaps[e]
            pieces.append(words)
            position += len(words)
            label = LABELS[labels[e]]
            name = names[label][picks[e]]
            pieces.append(name)
            columns["doc_id"].append(doc_id)
            columns["source"].append(source)
            columns["start"].append(position)
            columns["end"].append(position + len(name))
            columns["label"].append(label)
            columns["text"].append(name)
            columns["score"].append(float(scores[e]))
            columns["model"].append(BUNDLE_ID)
            position += len(name)
            separator = " " if e % 7 else ".\n"  # a sentence ends now and then
            pieces.append(separator)
            position += len(separator)
        pieces.append(" ".join(FILLER[i] for i in fillers[f:]) + ".")
        text = "".join(pieces)
        tokens += len(text) // 4
        lines.append(json.dumps({"id": doc_id, "text": text}))
    path = Path(source)
    path.write_text("\n".join(lines) + "\n")
    name = f"part-{shard:05d}.parquet"
    pq.write_table(
        pa.table(columns, schema=SPAN_SCHEMA),
        out / name,
        compression="zstd",
        row_group_size=65536,
    )
    info = path.stat()
    rows = len(columns["doc_id"])
    part = {
        "file": name,
        "rejects_file": None,
        "rows": rows,
        "documents": documents,
        "annotated": documents,
        "rejected": 0,
        "spans": rows,
        "tokens": tokens,
    }
    return {"path": source, "size": info.st_size, "mtime": info.st_mtime}, part


def build(work: Path, size_mb: float, shards: int, seed: int = 0) -> Path:
    """The output under `work` (built if it is not there for these arguments)."""
    key = f"{size_mb:g}mb-{shards}shards"
    root = work / key
    out = root / "out.parquet"
    if (out / "_SUCCESS").exists():
        return out
    rng = np.random.default_rng(seed)
    names = vocabulary(rng, 50_000)
    inputs = root / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    records, parts = [], []
    target = size_mb * 1e6
    written = 0
    shard = 0
    started = time.monotonic()
    # Parts of PART_DOCS documents, one input shard each, until the output is big enough; with
    # --shards 1 the shards are concatenated into one input file afterwards.
    while written < target:
        record, part = write_shard(rng, names, inputs, out, shard, shard * PART_DOCS, PART_DOCS)
        records.append(record)
        parts.append(part)
        written += (out / part["file"]).stat().st_size
        shard += 1
        print(
            f"  part {shard}: {written / 1e6:,.0f} MB of spans ({time.monotonic() - started:.0f}s)",
            file=sys.stderr,
        )
    if shards == 1 and len(records) > 1:
        single = inputs / "all.jsonl"
        with open(single, "wb") as f:
            for record in records:
                f.write(Path(record["path"]).read_bytes())
                os.unlink(record["path"])
        # Rewrite the parts' source column to the one file.
        for part in parts:
            table = pq.read_table(out / part["file"])
            table = table.set_column(1, "source", pa.array([str(single)] * table.num_rows))
            pq.write_table(table, out / part["file"], compression="zstd", row_group_size=65536)
        info = single.stat()
        records = [{"path": str(single), "size": info.st_size, "mtime": info.st_mtime}]
    # A few rejects, as a real corpus has.
    (out / "_rejects").mkdir(exist_ok=True)
    rejects = pa.table(
        {
            "source": [records[0]["path"]] * 3,
            "doc_id": [None, f"{records[0]['path']}:7", None],
            "line": [3, 7, 11],
            "reason": ["not valid JSON: Expecting value", "not valid UTF-8 at byte 12", "x"],
        }
    )
    pq.write_table(rejects, out / "_rejects" / "part-00000.parquet")
    parts[0]["rejects_file"] = "_rejects/part-00000.parquet"
    documents = sum(p["documents"] for p in parts)
    spans = sum(p["rows"] for p in parts)
    tokens = sum(p["tokens"] for p in parts)
    counts = {
        "documents": documents + 3,
        "annotated": documents,
        "rejected": 3,
        "spans": spans,
        "tokens": tokens,
    }
    parts[0]["rejected"] = 3
    parts[0]["documents"] += 3
    manifest = {
        "format": MANIFEST_FORMAT,
        "bundle_id": BUNDLE_ID,
        "bundle": "benchmark (no model)",
        "variant": "int8",
        "device": "cpu",
        "settings": {
            "variant": "int8",
            "max_length": 128,
            "stride": 32,
            "segment": "lines",
            "read": {
                "txt_mode": "file",
                "text_field": "text",
                "id_field": "id",
                "encoding_errors": "strict",
            },
            "batch_size": 32,
            "max_batch_tokens": 4096,
            "chunk_docs": 2048,
            "chunk_chars": 500000,
            "part_docs": PART_DOCS,
        },
        "inputs": records,
        "skipped_files": [],
        "options": {},
        "files": {"read": len(records), "rejected": 0, "skipped": 0},
        "parts": parts,
        "documents_done": counts["documents"],
        "counts": counts,
        "complete": True,
        "versions": {"nerbatch": "benchmark"},
        "started": "2026-12-01T00:00:00+00:00",
        "finished": "2026-12-01T01:00:00+00:00",
        "runs": 1,
        "summary": {
            "output": str(out),
            **counts,
            "parts": len(parts),
            "seconds": 3600.0,
            "tokens_per_second": round(tokens / 3600.0, 1),
            "bundle_id": BUNDLE_ID,
            "variant": "int8",
        },
        "rejects": "_rejects",
    }
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "_SUCCESS").write_bytes(b"")
    return out


CHILD = """
import json, sys, time, resource
started = time.perf_counter()
from ner_batch.view import ViewOptions, view
args = json.loads(sys.argv[1])
summary = view(args["output"], args["html"], ViewOptions(**args["options"]))
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) / 1024
print(json.dumps({"seconds": time.perf_counter() - started, "phases": summary["seconds"],
                  "peak_mb": hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "approximate": summary["approximate"], "sampled": summary["sampled"],
                  "shown": summary["shown_with_text"], "problems": len(summary["problems"])}))
"""

FLOOR = """
import json, resource
import ner_batch.view  # noqa: F401
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(json.dumps({"peak_mb": int(line.split()[1]) / 1024}))
"""


def run_child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="output size to build")
    parser.add_argument("--shards", type=int, default=0, help="input files: 0 one per part, 1")
    parser.add_argument("--work", type=Path, default=Path("work/benchmark-view"))
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--max-distinct", type=int, default=1_000_000)
    args = parser.parse_args()

    built = time.monotonic()
    out = build(args.work, args.size_mb, args.shards)
    build_seconds = time.monotonic() - built
    manifest = json.loads((out / "_manifest.json").read_text())
    size = directory_size(out)
    inputs_size = sum(i["size"] for i in manifest["inputs"])
    configs = [
        ("view, defaults", {"sample": args.sample, "max_distinct": args.max_distinct}),
        (
            "view --label PER --min-score 0.9",
            {"sample": args.sample, "labels": ["PER"], "min_score": 0.9},
        ),
        ("view, frequent table bounded to 20k", {"sample": args.sample, "max_distinct": 20_000}),
    ]
    floor = run_child(FLOOR)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"\noutput {out}: {size / 1e6:,.0f} MB, {manifest['counts']['spans']:,} spans, "
        f"{manifest['counts']['documents']:,} documents, {len(manifest['parts'])} parts; "
        f"inputs {inputs_size / 1e6:,.0f} MB in {len(manifest['inputs'])} files"
        + (f" (built in {build_seconds:.0f}s)" if build_seconds > 5 else "")
    )
    print(f"CPU: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"import only: peak RSS {floor['peak_mb']:.0f} MB\n")
    print(
        "| run | output MB | seconds | scan s | sample rows s | inputs s | render s | "
        "peak RSS MB | frequent table |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, options in configs:
        html = out.parent / "view.html"
        result = run_child(
            CHILD, json.dumps({"output": str(out), "html": str(html), "options": options})
        )
        p = result["phases"]
        print(
            f"| {name} | {size / 1e6:,.0f} | {result['seconds']:.1f} | {p['scan']:.1f} | "
            f"{p['sample_rows']:.2f} | {p['inputs']:.2f} | {p['render']:.2f} | "
            f"{result['peak_mb']:.0f} | {'approximate' if result['approximate'] else 'exact'} |"
        )
        if result["problems"] or result["shown"] != result["sampled"]:
            print(f"  ! {result['problems']} problems, {result['shown']}/{result['sampled']} shown")


if __name__ == "__main__":
    main()
