"""Quality table: dev and test F1 (overall and per type) of a checkpoint and its bundle.

Rows: PyTorch on gold tokens, each ONNX variant on gold tokens (on ONNX Runtime; with the
openvino variant and OpenVINO installed, also int8 and bf16 on OpenVINO), and the default options
end to end from raw text (int8, `--runtime auto`: the row names what it chose; gold turned into
a corpus with `gold2corpus`, annotated, scored from the Parquet output) with one document per
sentence and one per whole document. The PyTorch and end-to-end rows are repeated for each
`--decodes` (argmax: each word's label; viterbi: the best sequence the scheme allows).

    python benchmarks/quality.py --checkpoint runs/minilm --bundle export/minilm \
        --data ../shared/data/conll2003 [--json work/quality.json]

`--other-trainer DIR` checks instead a model that nerbatch did not train: MiniLM fine-tuned for
`--other-epochs` (1) with the plain transformers `Trainer` and saved with `save_pretrained` (no
nerbatch metadata; trained into DIR unless DIR already holds it), exported with `nerbatch
export`'s defaults and annotated with annotate's defaults, against the transformers pipeline
(aggregation "first", long documents in strided windows) on the same raw test documents: F1 of
each from its spans, and tokens per second.

`--bundle none` keeps only the PyTorch rows, e.g. to compare the decodings on a checkpoint with
BIOES labels (`benchmarks/plain_trainer.py --scheme BIOES`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from ner_batch.annotate import AnnotateConfig, annotate
from ner_batch.bundle import load_bundle
from ner_batch.corpus import gold_to_corpus
from ner_batch.runtimes import usable
from ner_batch.score import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/minilm")
    parser.add_argument("--bundle", default="export/minilm")
    parser.add_argument("--data", default="../shared/data/conll2003")
    parser.add_argument("--splits", default="dev,test")
    parser.add_argument("--variants", default="fp32,int8,fp16")
    parser.add_argument("--decodes", default="argmax,viterbi")
    parser.add_argument("--json", help="Also write the rows as JSON.")
    parser.add_argument("--other-trainer", help="Check a plain-Trainer model (see above).")
    parser.add_argument("--other-epochs", type=float, default=1.0)
    args = parser.parse_args()
    if args.other_trainer:
        other_trainer(Path(args.other_trainer), Path(args.data), args.other_epochs)
        return

    data = Path(args.data)
    rows: list[dict] = []

    def add(name: str, split: str, report: dict, seconds: float) -> None:
        default = report["default"]
        rows.append(
            {
                "system": name,
                "split": split,
                "f1": default["micro"]["f1"],
                "strict_f1": report["strict"]["micro"]["f1"],
                "per_type": {t: v["f1"] for t, v in default["per_type"].items()},
                "seconds": round(seconds, 1),
            }
        )
        print(f"  {name:<34} {split:<5} F1 {100 * default['micro']['f1']:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits.split(","):
            gold = data / f"{split}.txt"
            decodes = args.decodes.split(",")
            for decode in decodes:
                started = time.monotonic()
                add(
                    f"PyTorch, gold tokens, {decode}",
                    split,
                    score(gold, model=args.checkpoint, decode=decode),
                    time.monotonic() - started,
                )
            if args.bundle == "none":
                continue
            runs = [(v, "onnxruntime") for v in args.variants.split(",")]
            if "openvino" in usable(load_bundle(args.bundle), "int8")[0]:
                runs += [("int8", "openvino"), ("bf16", "openvino")]
            for variant, runtime in runs:
                started = time.monotonic()
                report = score(gold, model=args.bundle, variant=variant, runtime=runtime)
                name = f"{'ONNX' if runtime == 'onnxruntime' else 'OpenVINO'} {variant}"
                add(f"{name}, gold tokens", split, report, time.monotonic() - started)
            for unit, decode in itertools.product(("sentence", "document"), decodes):
                corpus = Path(tmp) / f"{split}-{unit}.jsonl"
                out = Path(tmp) / f"{split}-{unit}.parquet"
                gold_to_corpus(gold, corpus, unit)
                started = time.monotonic()
                summary = annotate(
                    AnnotateConfig(
                        inputs=[str(corpus)],
                        output=str(out),
                        model=args.bundle,
                        overwrite=True,
                        decode=decode,
                    )
                )
                report = score(gold, predictions=out)
                name = f"annotate int8 ({summary['runtime']}), raw text by {unit}, {decode}"
                add(name, split, report, time.monotonic() - started)

    metrics_file = Path(args.checkpoint) / "metrics.json"
    train_seconds = (
        json.loads(metrics_file.read_text())["train_seconds"] if (metrics_file.is_file()) else None
    )
    types = sorted({t for r in rows for t in r["per_type"]})
    header = "| system | split | F1 | strict F1 | " + " | ".join(types) + " | seconds |"
    print()
    print(header)
    print("| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in types) + " | ---: |")
    for r in rows:
        per_type = " | ".join(f"{100 * r['per_type'].get(t, 0):.2f}" for t in types)
        print(
            f"| {r['system']} | {r['split']} | {100 * r['f1']:.2f} | "
            f"{100 * r['strict_f1']:.2f} | {per_type} | {r['seconds']} |"
        )
    if train_seconds is not None:
        print(f"\ntraining time: {train_seconds / 60:.1f} min ({metrics_file})")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "train_seconds": train_seconds}, indent=2)
        )


def other_trainer(model_dir: Path, data: Path, epochs: float) -> None:
    import torch
    from plain_trainer import fine_tune_with_the_plain_trainer
    from transformers import pipeline

    from ner_batch.conll import read_conll
    from ner_batch.corpus import gold_records
    from ner_batch.export import export
    from ner_batch.output import PartWriter
    from ner_batch.tagger import Span

    if not (model_dir / "config.json").is_file():
        started = time.monotonic()
        fine_tune_with_the_plain_trainer(data / "train.txt", model_dir, epochs=epochs)
        print(f"trained with the plain Trainer in {time.monotonic() - started:.0f} s")
    gold = data / "test.txt"
    records = gold_records(read_conll(gold), "document")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export(model_dir, bundle)  # export's defaults
        corpus = Path(tmp) / "test-docs.jsonl"
        gold_to_corpus(gold, corpus, "document")
        out = Path(tmp) / "annotate.parquet"
        summary = annotate(AnnotateConfig(inputs=[str(corpus)], output=str(out), model=str(bundle)))
        tokens = summary["tokens"]
        f1 = score(gold, predictions=out)["default"]["micro"]["f1"]
        rows.append((f"annotate, defaults (int8, {summary['runtime']})", f1, summary["seconds"]))

        torch.set_num_threads(os.cpu_count() or 1)
        tagger = pipeline(
            "token-classification",
            model=str(model_dir),
            aggregation_strategy="first",
            stride=64,
            device="cpu",
        )
        texts = [r["text"] for r in records]
        tagger(texts[:8], batch_size=8)  # warm-up
        started = time.monotonic()
        found = tagger(texts, batch_size=8)
        seconds = time.monotonic() - started
        spans_out = Path(tmp) / "pipeline.parquet"  # an output `score --predictions` reads
        spans_out.mkdir()
        with PartWriter(str(spans_out / "part-00000.parquet")) as writer:
            for record, entities in zip(records, found, strict=True):
                spans = [
                    Span(e["start"], e["end"], e["entity_group"], float(e["score"]))
                    for e in entities
                    if e["end"] > e["start"]
                ]
                writer.add(record["id"], "pipeline", record["text"], spans, "pipeline")
        (spans_out / "_SUCCESS").touch()
        f1_pipeline = score(gold, predictions=spans_out)["default"]["micro"]["f1"]
        rows.insert(0, ("HF pipeline, PyTorch fp32 (aggregation first)", f1_pipeline, seconds))
    print(f"\nplain-Trainer MiniLM ({epochs:g} epoch), CoNLL test as {len(records)} raw documents")
    print("| system | F1 | tokens/s | x pipeline |")
    print("| --- | ---: | ---: | ---: |")
    for name, f1, seconds in rows:
        print(f"| {name} | {100 * f1:.2f} | {tokens / seconds:,.0f} | {rows[0][2] / seconds:.2f} |")
    print(f"\nF1 difference, annotate - pipeline: {100 * (rows[1][1] - rows[0][1]):+.2f}")


if __name__ == "__main__":
    main()
