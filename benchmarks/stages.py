"""Where annotate's CPU goes: each stage of the local engine run alone, its CPU seconds measured.

`nerbatch annotate` overlaps its stages (a worker thread tokenises and infers one chunk while
the main thread reads the next and decodes and writes the one before), so a profile of the real
run cannot say what each stage costs. Here the same stages run one after the other on the same
corpus, with the run's default options and chunks, each timed by the process's CPU clock (every
thread, the runtime's and the tokenizer's included):

- read: JSONL lines -> documents (readers.read_file);
- tokenizer: the tokenizers library's `encode_batch`, alone;
- encode glue: the rest of `TextEncoder.encode_batch` (arrays, words, word shapes, line breaks);
- model: the runtime on exactly the batches the Tagger formed (recorded, then replayed with the
  run's streams): what the bare model loop costs;
- batching glue: the rest of `Tagger.predict` (windows, batches, padding, softmax, scatter);
- decode: `Tagger.spans`, word labels -> character spans;
- rows + Parquet: `output.spans_table` and a PartWriter writing the part.

Then the real `annotate()` on the same corpus, with its own CPU and wall clock: its CPU beyond
the stages' sum is what running them at once costs (threads contending, spinning, GIL waits).

    python benchmarks/stages.py --bundle export/minilm --data ../shared/data/conll2003
    python benchmarks/stages.py ... --runtime onnxruntime --copies 6
    python benchmarks/stages.py ... --corpus long.jsonl   # any JSONL with a "text" field
    python benchmarks/stages.py ... --long-mb 5   # generated long and mixed documents
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))


def cpu() -> float:
    """CPU seconds of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """CPU and wall seconds per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def run(self, stage: str, work: Callable):
        started_cpu, started = cpu(), time.perf_counter()
        result = work()
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu() - started_cpu
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - started
        return result


def write_corpus(path: Path, data: Path, copies: int) -> None:
    from throughput import gold_sentences

    texts = [" ".join(s.tokens) for s in gold_sentences(data)]
    with open(path, "w") as f:
        for copy in range(copies):
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": f"{copy}-{i}", "text": text}) + "\n")


def profile(args) -> dict:
    import numpy as np

    from ner_batch.annotate import annotate
    from ner_batch.bundle import load_bundle
    from ner_batch.output import PartWriter, spans_table
    from ner_batch.readers import Document, ReadOptions, expand_inputs, read_file
    from ner_batch.run import AnnotateConfig
    from ner_batch.runtimes import open_tagger

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus.jsonl"
        if args.long_mb:
            from throughput import make_corpus

            make_corpus(corpus, args.long_mb, Path(args.data))
        elif not args.corpus:
            write_corpus(corpus, Path(args.data), args.copies)
        config = AnnotateConfig([str(corpus)], str(Path(tmp) / "out.parquet"), model=args.bundle)
        config.runtime = args.runtime
        bundle = load_bundle(args.bundle)
        tagger = open_tagger(
            bundle, config.variant, runtime=config.runtime, options=config.tagger_options()
        )
        runtime = tagger.runtime["runtime"]
        clock = Clock()
        files, _ = expand_inputs([str(corpus)])
        items = clock.run("read", lambda: list(read_file(files[0], ReadOptions())))
        documents = [d for d in items if isinstance(d, Document)]
        chunks = [
            documents[i : i + config.chunk_docs]
            for i in range(0, len(documents), config.chunk_docs)
        ]
        # Record the batches the Tagger forms, to replay them through the model alone.
        model_fn, recorded = tagger.logits_fn, []

        def recording(ids, mask, types):
            recorded.append((ids.copy(), mask.copy(), types.copy()))
            return model_fn(ids, mask, types)

        tagger.logits_fn = recording
        encoder = tagger.encoder
        tokens, spans_of_chunks = 0, []
        for chunk in chunks:
            texts = [d.text for d in chunk]
            clock.run(
                "tokenizer",
                lambda texts=texts: encoder.tokenizer.encode_batch(texts, add_special_tokens=False),
            )
            encoded = clock.run("encode (all)", lambda texts=texts: encoder.encode_batch(texts))
            tokens += sum(len(e) for e in encoded)
            predictions = clock.run(
                "predict (all)", lambda encoded=encoded: tagger.predict(encoded)
            )
            spans_of_chunks.append(
                clock.run(
                    "decode",
                    lambda chunk=chunk, predictions=predictions: [
                        tagger.spans(d.text, p) for d, p in zip(chunk, predictions, strict=True)
                    ],
                )
            )
        tagger.logits_fn = model_fn

        def replay() -> None:
            if tagger.streams > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(tagger.streams) as pool:
                    list(pool.map(lambda feed: model_fn(*feed), recorded))
            else:
                for feed in recorded:
                    model_fn(*feed)

        clock.run("model", replay)

        def write() -> None:
            with PartWriter(str(Path(tmp) / "part.parquet")) as writer:
                for chunk, spans in zip(chunks, spans_of_chunks, strict=True):
                    table, counts = spans_table(chunk, spans, bundle.bundle_id)
                    writer.add_table(table, counts)

        clock.run("rows + Parquet", write)
        stages = {
            "read": clock.cpu["read"],
            "tokenizer": clock.cpu["tokenizer"],
            "encode glue": max(0.0, clock.cpu["encode (all)"] - clock.cpu["tokenizer"]),
            "model": clock.cpu["model"],
            "batching glue": max(0.0, clock.cpu["predict (all)"] - clock.cpu["model"]),
            "decode": clock.cpu["decode"],
            "rows + Parquet": clock.cpu["rows + Parquet"],
        }
        for held in (documents, items, chunks, spans_of_chunks, recorded):
            held.clear()  # free memory before the real run
        started_cpu, started = cpu(), time.perf_counter()
        summary = annotate(config)
        run = {"cpu": cpu() - started_cpu, "wall": time.perf_counter() - started}
        run["seconds"] = summary["seconds"]
    return {
        "runtime": runtime,
        "streams": tagger.streams,
        "documents": summary["documents"],
        "tokens": tokens,
        "stages": stages,
        "model_wall": clock.wall["model"],
        "run": run,
        "np": np.__version__,
    }


def table(result: dict, cpu_name: str) -> str:
    stages, run = result["stages"], result["run"]
    total = sum(stages.values())
    tokens = result["tokens"]
    lines = [
        f"CPU: {cpu_name}; runtime {result['runtime']} ({result['streams']} streams); "
        f"{result['documents']:,} documents, {tokens:,} sub-tokens",
        "",
        "| stage, run alone | CPU s | share of the stages' CPU |",
        "|---|---:|---:|",
    ]
    for name, seconds in stages.items():
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / total:.1f}% |")
    lines.append(f"| **sum of the stages** | **{total:.2f}** | 100% |")
    model = stages["model"]
    lines += [
        "",
        "| | wall s | CPU s | tokens/s |",
        "|---|---:|---:|---:|",
        f"| bare model loop (the Tagger's batches) | {result['model_wall']:.2f} | {model:.2f} | "
        f"{tokens / result['model_wall']:,.0f} |",
        f"| annotate() whole (read to _SUCCESS, plus plan) | {run['wall']:.2f} | {run['cpu']:.2f} "
        f"| {tokens / run['wall']:,.0f} |",
        f"| annotate() by its own clock | {run['seconds']:.2f} | | "
        f"{tokens / run['seconds']:,.0f} |",
        "",
        f"End to end / bare: {result['model_wall'] / run['seconds']:.2f} (own clock). "
        f"Non-model stages: {100 * (total - model) / total:.1f}% of the stages' CPU; the run "
        f"used {run['cpu'] - total:+.2f} CPU s beyond the stages' sum "
        "(contention when they overlap).",
    ]
    return "\n".join(lines)


def main() -> None:
    from throughput import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", default=str(HERE.parents[2] / "shared/data/conll2003"))
    parser.add_argument("--copies", type=int, default=6, help="test sentences x N")
    parser.add_argument("--corpus", help="a JSONL corpus instead of the test sentences")
    parser.add_argument(
        "--long-mb",
        type=float,
        help="instead, this many MB of generated documents of mixed length, some very long "
        "(throughput.make_corpus)",
    )
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"])
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args()
    result = profile(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(table(result, describe_cpu()))


if __name__ == "__main__":
    main()
