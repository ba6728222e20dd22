"""What resuming costs: the last 5% of a 50 MB corpus after a crash at 95%.

A resumed annotate run starts reading at the input position its manifest recorded; before, the
local engine read (and JSON-parsed) every done document again and threw it away. This script
measures both on the same output state, in the same run:

  1. annotate the corpus with `--part-docs` set so that a part ends at 95% of its documents, and
     crash right after that commit (the rest is lost, as with kill -9);
  2. copy that output twice; in one copy remove the manifest's `position`, which makes the run
     core fall back to counting the done documents from the start of the stream (what the local
     engine always did before);
  3. resume both copies and time them, plus the reading alone (the stream from the start versus
     from the recorded position).

    python benchmarks/resume.py --bundle export/minilm --data ../shared/data/conll2003
    python benchmarks/resume.py --tiny-from runs/minilm --data ../shared/data/conll2003

The model's speed does not enter the comparison (both resumes tag the same 5%); `--tiny-from`
builds a random 2-layer bundle from a checkpoint's tokenizer (as throughput.py does) so that the
95% setup run takes a minute or two instead of half an hour.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from throughput import build_tiny_bundle, make_corpus  # noqa: E402

import ner_batch.annotate as annotate_module  # noqa: E402
from ner_batch.annotate import AnnotateConfig, annotate  # noqa: E402
from ner_batch.manifest import Manifest  # noqa: E402
from ner_batch.output import OutputDir  # noqa: E402
from ner_batch.plan import input_files, resume_point  # noqa: E402
from ner_batch.readers import ReadOptions  # noqa: E402


class Crash(Exception):
    """Stands for kill -9 right after a commit."""


def crash_after(after: int):
    real = annotate_module.documents

    def documents(files, read, *start):
        for n, item in enumerate(real(files, read, *start)):
            if n == after:
                raise Crash(after)
            yield item

    return documents


def timed_read(files, first: int, skip: int) -> tuple[float, int]:
    """Seconds to read the stream from (first, skip) to the end, and the documents read."""
    started = time.monotonic()
    n = sum(1 for _ in annotate_module.documents(files, ReadOptions(), first, skip))
    return time.monotonic() - started, n


def cpu_name() -> str:
    """The CPU model and its widest vector extension, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line), "?"
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in info.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
    isa = next(
        (f for f in ("amx_tile", "avx512_vnni", "avx512f", "avx2") if f in flags), "baseline"
    )
    return f"{name} ({isa})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="The bundle to annotate with")
    parser.add_argument("--tiny-from", help="Build a random 2-layer bundle from this checkpoint")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/conll2003"))
    parser.add_argument("--megabytes", type=float, default=50)
    parser.add_argument("--done", type=float, default=0.95, help="Fraction committed at the crash")
    parser.add_argument("--work", type=Path, help="Working directory [default: a temporary one]")
    args = parser.parse_args()
    if not (args.bundle or args.tiny_from):
        parser.error("give --bundle or --tiny-from")

    temporary = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or Path(temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or str(build_tiny_bundle(args.tiny_from, work / "tiny"))
    corpus = work / "corpus.jsonl"
    make_corpus(corpus, args.megabytes, args.data)
    with open(corpus, "rb") as f:
        documents = sum(1 for _ in f)
    done = int(documents * args.done)
    print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB, {documents} documents; crash at {done}")

    def config(output: Path) -> AnnotateConfig:
        return AnnotateConfig([str(corpus)], str(output), model=bundle, part_docs=done)

    crashed = work / "crashed.parquet"
    started = time.monotonic()
    annotate_module.documents, real = crash_after(done), annotate_module.documents
    try:
        annotate(config(crashed))
    except Crash:
        pass
    finally:
        annotate_module.documents = real
    setup = time.monotonic() - started
    manifest = json.loads((crashed / "_manifest.json").read_text())
    assert manifest["documents_done"] == done, manifest["documents_done"]

    rows = []
    for name, keep_position in (("by recorded position (now)", True), ("by count (before)", False)):
        out = work / f"resume-{keep_position}.parquet"
        shutil.copytree(crashed, out)
        state = json.loads((out / "_manifest.json").read_text())
        if not keep_position:
            del state["position"]
        (out / "_manifest.json").write_text(json.dumps(state))
        first, skip, drop = resume_point(Manifest.from_json(state))
        files, _ = input_files(config(out), OutputDir(out))
        read_seconds, read_docs = timed_read(files, first, skip)
        started = time.monotonic()
        summary = annotate(config(out))
        seconds = time.monotonic() - started
        assert summary["documents_this_run"] == documents - done
        rows.append((name, read_docs, read_seconds, seconds, summary["documents_this_run"]))

    print(f"\nCPU: {cpu_name()}; setup run (95%): {setup:.1f} s")
    print("| resume | documents read | reading s | resume s (end to end) | documents tagged |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, read_docs, read_seconds, seconds, tagged in rows:
        print(f"| {name} | {read_docs:,} | {read_seconds:.2f} | {seconds:.2f} | {tagged:,} |")
    print(f"\nresume now / before: {rows[0][3] / rows[1][3]:.2f}x the time")
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
