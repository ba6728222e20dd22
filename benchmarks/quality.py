"""Quality table: dev and test F1 (overall and per type) of a checkpoint and its bundle.

Rows: PyTorch on gold tokens, each ONNX variant on gold tokens (on ONNX Runtime; with the
openvino variant and OpenVINO installed, also int8 and bf16 on OpenVINO), and the default options
end to end from raw text (int8, `--runtime auto`: the row names what it chose; gold turned into
a corpus with `gold2corpus`, annotated, scored from the Parquet output) with one document per
sentence and one per whole document.

    python benchmarks/quality.py --checkpoint runs/minilm --bundle export/minilm \
        --data ../shared/data/conll2003 [--json work/quality.json]
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--json", help="Also write the rows as JSON.")
    args = parser.parse_args()

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
            started = time.monotonic()
            add(
                "PyTorch, gold tokens",
                split,
                score(gold, model=args.checkpoint),
                time.monotonic() - started,
            )
            runs = [(v, "onnxruntime") for v in args.variants.split(",")]
            if "openvino" in usable(load_bundle(args.bundle), "int8")[0]:
                runs += [("int8", "openvino"), ("bf16", "openvino")]
            for variant, runtime in runs:
                started = time.monotonic()
                report = score(gold, model=args.bundle, variant=variant, runtime=runtime)
                name = f"{'ONNX' if runtime == 'onnxruntime' else 'OpenVINO'} {variant}"
                add(f"{name}, gold tokens", split, report, time.monotonic() - started)
            for unit in ("sentence", "document"):
                corpus = Path(tmp) / f"{split}-{unit}.jsonl"
                out = Path(tmp) / f"{split}-{unit}.parquet"
                gold_to_corpus(gold, corpus, unit)
                started = time.monotonic()
                summary = annotate(
                    AnnotateConfig(
                        inputs=[str(corpus)], output=str(out), model=args.bundle, overwrite=True
                    )
                )
                report = score(gold, predictions=out)
                name = f"annotate int8 ({summary['runtime']}), raw text by {unit}"
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


if __name__ == "__main__":
    main()
