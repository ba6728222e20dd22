"""Annotate throughput and memory against the Hugging Face pipeline, in one run.

Every system runs in its own subprocess on the same texts, so peak RSS (VmHWM) is its own.
Rows: `transformers.pipeline("token-classification")` on the PyTorch checkpoint (batch 32,
aggregation "first": the baseline); the real `nerbatch annotate` command with its default options
(int8, `--runtime auto`, its start-up probe in "load s"); `nerbatch annotate` end to end (read ->
tokenise -> infer -> spans -> Parquet) with int8 on ONNX Runtime, int8 and bf16 on OpenVINO (when
the bundle has the openvino variant and OpenVINO is installed) and fp32; and bare model loops
(model time only) on ONNX Runtime and OpenVINO on exactly the batches annotate forms (its
chunks, windows, length-sorted padded batches and word shapes), each timed on a cold pass (every
shape new, as in a fresh process) and then a warm one (the row). The texts
are the CoNLL test sentences `--copies` times over (6: 20,718 documents). The default command
runs once first on an empty cache of its own (its first run on a machine: probe, compiles), then
in the rounds as later runs do; its rows show the whole process and the run's own clock. The table
names the CPU and its int8/bf16 features; `--isa-caps AVX2,AVX512_CORE_VNNI` adds what `--runtime
auto` chooses, and how fast the default command runs, with OpenVINO's oneDNN capped at each ISA
(`ONEDNN_MAX_CPU_ISA`), i.e. as on such CPUs. Every system runs `--repeat` rounds
(default 3), interleaved, so that a slow spell of a shared machine hits all rows alike; each row is
its median round, with the range. Ratios are to the baseline measured in the same run. F1 is
seqeval against the gold the texts came from. With `--device cuda` the baseline runs on the GPU
too and the annotate rows use the fp16 variant.

    python benchmarks/throughput.py --checkpoint runs/minilm --bundle export/minilm \
        --data ../shared/data/conll2003
    python benchmarks/throughput.py ... --isa-caps AVX2,AVX512_CORE_VNNI   # + the probe per ISA
    python benchmarks/throughput.py ... --fast-bundle DIR   # + a row for another bundle's int8
    python benchmarks/throughput.py ... --engine ray,spark --num-workers 2   # + Ray and Spark rows
    python benchmarks/throughput.py ... --scaling-only --scaling 5,20,50 \
        --tiny-bundle auto --tiny-scaling 50,1000   # memory and scaling only

`--scaling` sizes (MB of JSONL generated from CoNLL train text: many documents of mixed length,
some very long) run annotate with the real bundle and report tokens/s and peak RSS per size;
`--tiny-scaling` does the same with a random 2-layer, 32-wide network (`--tiny-bundle auto`
builds one with --checkpoint's tokenizer and labels), so reading, tokenising and writing dominate.
`--engine ray` adds a row for `annotate --engine ray` on a local Ray cluster that the row starts
(its time includes starting the actors, not the cluster; its peak RSS is the driver's alone, not
the Ray workers'). `--engine spark` adds one for `annotate --engine spark` on `local[2]` (its time
includes starting Spark's JVM and Python workers; the corpus is one file, so one Spark task, run
with `--threads` ONNX Runtime threads, 2 by default; peak RSS is the Python driver's alone).
`--spacy-python PY` adds a row for spaCy's small English pipeline (`nlp.pipe`, NER only, the best
of a sweep over batch sizes and `n_process`), run by PY, a Python with spaCy and the pipeline
installed (`make install-spacy` makes `.venv-spacy`); its OntoNotes labels are mapped onto
CoNLL's for an F1 that is indicative only (see SPACY_TO_CONLL).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()


# --- workers (each in its own process) -----------------------------------------------------------


def gold_sentences(data: Path, copies: int = 1):
    """The CoNLL test sentences, `copies` times over (the issue's "test sentences x6")."""
    from ner_batch.conll import read_conll, sentences_of

    return sentences_of(read_conll(data / "test.txt")) * copies


def f1_of(sentences, spans_per_text) -> float:
    from ner_batch.conll import token_offsets
    from ner_batch.score import seqeval_report
    from ner_batch.tagger import token_tags

    predicted = []
    for sentence, spans in zip(sentences, spans_per_text, strict=True):
        _, starts, ends = token_offsets(sentence.tokens)
        predicted.append(token_tags(starts, ends, spans))
    report = seqeval_report([s.tags for s in sentences], predicted)
    return report["default"]["micro"]["f1"]


def shaped_pipeline_class(checkpoint: str):
    """The token-classification pipeline, feeding the word-shape token types that a nerbatch
    checkpoint was trained with (computed by nerbatch's own encoder, as annotate does), so the
    baseline runs the same model on the same inputs. Without them it scores about 63 F1."""
    from transformers.pipelines.token_classification import TokenClassificationPipeline

    meta = json.loads((Path(checkpoint) / "nerbatch.json").read_text())
    if not meta.get("word_shapes"):
        return TokenClassificationPipeline
    from ner_batch.features import TextEncoder

    encoder = TextEncoder(Path(checkpoint) / "tokenizer.json", word_shapes=True)

    class ShapedPipeline(TokenClassificationPipeline):
        def preprocess(self, sentence, offset_mapping=None, **params):
            for inputs in super().preprocess(sentence, offset_mapping, **params):
                ids = inputs["input_ids"]
                if inputs.get("sentence") is not None and "token_type_ids" in inputs:
                    types = encoder.encode_batch([inputs["sentence"]])[0].type_ids
                    if len(types) == ids.shape[1] - 2:  # one chunk: [CLS] tokens [SEP]
                        inputs["token_type_ids"][0, 1:-1] = torch_tensor(types)
                yield inputs

    return ShapedPipeline


def torch_tensor(values):
    import torch

    return torch.as_tensor(values, dtype=torch.long)


def worker_pipeline(args) -> dict:
    import torch
    from transformers import pipeline

    from ner_batch.tagger import Span

    torch.set_num_threads(os.cpu_count() or 1)
    sentences = gold_sentences(Path(args.data), args.copies)
    texts = [" ".join(s.tokens) for s in sentences]
    nlp = pipeline(
        "token-classification",
        model=args.checkpoint,
        aggregation_strategy="first",
        device=0 if args.device == "cuda" else -1,  # the baseline runs where annotate runs
        pipeline_class=shaped_pipeline_class(args.checkpoint),
    )
    nlp(texts[:64], batch_size=32)  # warm-up, not timed
    started = time.perf_counter()
    outputs = nlp(texts, batch_size=32)
    seconds = time.perf_counter() - started
    spans = [
        [Span(o["start"], o["end"], o["entity_group"], float(o["score"])) for o in out]
        for out in outputs
    ]
    return {"seconds": seconds, "documents": len(texts), "f1": f1_of(sentences, spans)}


def worker_annotate(args) -> dict:
    from ner_batch.annotate import AnnotateConfig, RayOptions, annotate
    from ner_batch.output import read_spans

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus.jsonl"
        sentences = None
        if not args.corpus:
            sentences = gold_sentences(Path(args.data), args.copies)
            with open(corpus, "w") as f:
                for i, s in enumerate(sentences):
                    f.write(json.dumps({"id": str(i), "text": " ".join(s.tokens)}) + "\n")
        out = Path(tmp) / "out.parquet"
        started = time.perf_counter()
        summary = annotate(
            AnnotateConfig(
                inputs=[str(corpus)],
                output=str(out),
                model=args.bundle,
                variant=args.variant,
                device=args.device,
                threads=args.threads if args.engine in ("local", "spark") else 0,
                batch_size=args.batch_size,
                max_batch_tokens=args.max_batch_tokens,
                streams=args.streams or 0,  # rows without --streams: the default
                runtime=args.runtime,
                engine=args.engine,
                ray=RayOptions(num_workers=args.num_workers if args.engine == "ray" else None),
                spark_master="local[2]" if args.engine == "spark" else None,
            )
        )
        # Timed like the baseline, whose model load is not timed either: from the first
        # document read to _SUCCESS (the run summary's clock, started once the bundle is
        # loaded and checked). `wall` adds loading, checksums and session creation.
        result = {
            "seconds": summary["seconds"],
            "wall": time.perf_counter() - started,
            "documents": summary["documents"],
            "tokens": summary["tokens"],
        }
        if sentences is not None:
            by_doc = read_spans(out)
            result["f1"] = f1_of(sentences, [by_doc.get(str(i), []) for i in range(len(sentences))])
    return result


def worker_cli(args) -> dict:
    """The real `nerbatch annotate` command in its own process, default options but --model
    (int8, `--runtime auto`: its start-up probe included in `wall`), on the test sentences."""
    from ner_batch.output import read_spans

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        sentences = gold_sentences(Path(args.data), args.copies)
        with open(corpus, "w") as f:
            for i, s in enumerate(sentences):
                f.write(json.dumps({"id": str(i), "text": " ".join(s.tokens)}) + "\n")
        out = Path(tmp) / "out.parquet"
        command = [sys.executable, "-m", "ner_batch.cli", "annotate", str(corpus), str(out)]
        started = time.perf_counter()
        subprocess.run([*command, "--model", args.bundle], check=True, capture_output=True)
        wall = time.perf_counter() - started
        manifest = json.loads((out / "_manifest.json").read_text())
        by_doc = read_spans(out)
    summary = manifest["summary"]
    return {
        # The CLI's own peak (the only child waited for); this worker's is smaller.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "seconds": summary["seconds"],
        "wall": wall,
        "documents": summary["documents"],
        "tokens": summary["tokens"],
        "f1": f1_of(sentences, [by_doc.get(str(i), []) for i in range(len(sentences))]),
        "runtime_choice": manifest["runtime_choice"],
    }


def worker_bare_openvino(args) -> dict:
    """Model time only on OpenVINO, as worker_bare_onnx: the bundle's openvino variant (int8)
    or, for --variant bf16, its fp32 graph in bf16; `--streams` concurrent requests."""
    from concurrent.futures import ThreadPoolExecutor

    from ner_batch import backends
    from ner_batch.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    name = "fp32" if args.variant == "bf16" else "openvino"
    file = bundle.path / bundle.meta["variants"][name]["file"]
    precision = "bf16" if args.variant == "bf16" else "f32"
    model = backends.load(
        "openvino",
        file,
        precision=precision,
        threads=args.threads,
        streams=args.streams or 0,
        padding=(0, bundle.meta["max_length"]),
    )
    batches = _tagger_batches(bundle, args)
    with ThreadPoolExecutor(model.streams) as pool:
        return _cold_and_warm(
            lambda: list(pool.map(lambda feed: model.logits(*feed.values()), batches)), batches
        )


def _cold_and_warm(run_all: Callable[[], object], batches: list[dict]) -> dict:
    """Time two passes over the batches: the first (cold: a runtime meets each new shape for the
    first time, as a fresh process does; OpenVINO prepares its kernels per shape), then the
    second (warm: the runtime's steady speed). The row is the warm pass."""
    started = time.perf_counter()
    run_all()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    run_all()
    warm = time.perf_counter() - started
    return {"seconds": warm, "cold_seconds": cold, "documents": _documents(batches)}


def _documents(batches: list[dict]) -> int:
    return sum(len(b["input_ids"]) for b in batches)


def _tagger_batches(bundle, args) -> list[dict]:
    """The batches annotate forms on the same corpus with its defaults: its chunks (documents,
    characters and part ends, `run.chunks`), windows, length-sorted padded batches within each
    chunk, word-shape type ids. Recorded from a Tagger whose model returns zeros, so no model
    runs here."""
    import numpy as np

    from ner_batch.run import AnnotateConfig, tag_in_chunks
    from ner_batch.runtimes import open_tagger

    config = AnnotateConfig(inputs=[], output="", model=args.bundle)
    tagger = open_tagger(bundle, "fp32", runtime="onnxruntime", options=config.tagger_options())
    n_labels = len(tagger.labels.labels)
    batches: list[dict] = []

    def record(ids, mask, types):
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return np.zeros((*ids.shape, n_labels), dtype=np.float32)

    tagger.logits_fn = record
    texts = [" ".join(s.tokens) for s in gold_sentences(Path(args.data), args.copies)]
    for _ in tag_in_chunks(tagger, texts, config.chunk_docs, config.chunk_chars, config.part_docs):
        pass
    return batches


def worker_bare_onnx(args) -> dict:
    """Model time only: tokenise everything first, then length-sorted padded batches."""
    from ner_batch import backends
    from ner_batch.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    variant = bundle.resolve_variant(args.variant)
    file = bundle.path / bundle.meta["variants"][variant]["file"]
    model = backends.load("onnxruntime", file, device=args.device, threads=args.threads)
    batches = _tagger_batches(bundle, args)

    def run_all() -> None:
        for feed in batches:
            model.logits(*feed.values())

    return _cold_and_warm(run_all, batches)


def worker_spacy(args) -> dict:
    """spaCy's `nlp.pipe` over the texts in --texts (a JSON list), NER only, at each batch size and
    `n_process` of the sweep; the fastest setting's time and spans. Runs in spaCy's own Python:
    standard library and spaCy only."""
    import importlib

    import spacy

    texts = json.loads(Path(args.texts).read_text())
    try:
        nlp = spacy.load(args.spacy_model)
    except OSError:  # a pipeline package that spaCy 2 cannot find by name (no shortcut link)
        nlp = importlib.import_module(args.spacy_model).load()
    # The NER component and, in spaCy 3 pipelines, the shared tok2vec it may listen to.
    keep = {"ner", "tok2vec"}
    nlp.disable_pipes(*[name for name in nlp.pipe_names if name not in keep])
    list(nlp.pipe(texts[:256]))  # warm-up, not timed
    best = None
    for n_process in sorted({1, os.cpu_count() or 1}):
        for batch_size in (64, 256, 1000):
            started = time.perf_counter()
            docs = list(nlp.pipe(texts, batch_size=batch_size, n_process=n_process))
            seconds = time.perf_counter() - started
            if best is None or seconds < best[0]:
                best = (seconds, batch_size, n_process, docs)
    seconds, batch_size, n_process, docs = best
    meta = nlp.meta
    return {
        "seconds": seconds,
        "documents": len(texts),
        "setting": f"batch_size {batch_size}, n_process {n_process}",
        "version": f"spaCy {spacy.__version__}, {meta['lang']}_{meta['name']} {meta['version']}",
        "spans": [[[e.start_char, e.end_char, e.label_] for e in doc.ents] for doc in docs],
    }


WORKERS = {
    "pipeline": worker_pipeline,
    "annotate": worker_annotate,
    "bare": worker_bare_onnx,
    "bare-openvino": worker_bare_openvino,
    "cli": worker_cli,
    "spacy": worker_spacy,
}

# spaCy's English pipelines tag OntoNotes' 18 types. For an indicative F1 against CoNLL gold:
# people, organisations and places map directly, the other named types onto MISC, and the numeric
# types (DATE, TIME, PERCENT, MONEY, QUANTITY, ORDINAL, CARDINAL) are dropped. The two guidelines
# still differ (e.g. CoNLL tags nationalities as MISC, OntoNotes as NORP), so this is no match for
# a model trained on CoNLL.
SPACY_TO_CONLL = {
    "PERSON": "PER",
    "ORG": "ORG",
    "GPE": "LOC",
    "LOC": "LOC",
    "FAC": "LOC",
    "NORP": "MISC",
    "EVENT": "MISC",
    "WORK_OF_ART": "MISC",
    "LAW": "MISC",
    "LANGUAGE": "MISC",
    "PRODUCT": "MISC",
}


def spacy_row(python: str, model: str, data: Path, copies: int = 1) -> dict:
    """The spaCy worker in its own Python, and the F1 of its spans mapped onto CoNLL's types."""
    from ner_batch.tagger import Span

    sentences = gold_sentences(data, copies)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as texts:
        json.dump([" ".join(s.tokens) for s in sentences], texts)
        texts.flush()
        result = spawn("spacy", python=python, texts=texts.name, spacy_model=model)
    spans = [
        [
            Span(start, end, SPACY_TO_CONLL[label], 1.0)
            for start, end, label in doc
            if label in SPACY_TO_CONLL
        ]
        for doc in result.pop("spans")
    ]
    result["f1"] = f1_of(sentences, spans)
    result["name"] = f"{result['version']}, NER only, {result['setting']} (F1: mapped labels)"
    return result


# --- the driver ----------------------------------------------------------------------------------


def own_peak_rss_mb() -> float | None:
    """This process's peak RSS since exec (VmHWM). wait4's ru_maxrss would not do: Linux
    carries the forking parent's peak into the child's, so a driver that has built a model
    (torch loaded) would inflate every later row."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def spawn(kind: str, python: str | None = None, env: dict | None = None, **options) -> dict:
    """Run a worker in a subprocess (this Python unless `python` is given, with `env` added to
    the environment); its peak RSS in MB (VmHWM, else wait4's ru_maxrss)."""
    command = [python or sys.executable, str(HERE), "--worker", kind]
    for key, value in options.items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result_file:
        process = subprocess.Popen(
            [*command, "--result", result_file.name], env={**os.environ, **(env or {})}
        )
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"worker {kind} failed ({status})")
        result = json.loads(Path(result_file.name).read_text())
    if result.get("peak_rss_mb") is None:
        result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def describe_cpu() -> str:
    from ner_batch.probe import describe_cpu as describe

    return describe()


def count_tokens(bundle: str, data: Path, copies: int = 1) -> int:
    from ner_batch.bundle import load_bundle

    encoder = load_bundle(bundle).encoder()
    return sum(
        len(e)
        for e in encoder.encode_batch([" ".join(s.tokens) for s in gold_sentences(data, copies)])
    )


def make_corpus(path: Path, megabytes: float, data: Path, seed: int = 0) -> None:
    """JSONL documents built from CoNLL train sentences: mostly 1-40 sentences, 1% with
    500-3000 (very long documents), until the file reaches the size."""
    from ner_batch.conll import read_conll, sentences_of

    lines = [" ".join(s.tokens) for s in sentences_of(read_conll(data / "train.txt"))]
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    written = 0
    with open(path, "w") as f:
        i = 0
        while written < target:
            n = rng.randint(500, 3000) if rng.random() < 0.01 else rng.randint(1, 40)
            start = rng.randrange(len(lines))
            text = "\n".join(lines[(start + k) % len(lines)] for k in range(n))
            record = json.dumps({"id": f"d{i}", "text": text}) + "\n"
            f.write(record)
            written += len(record.encode())
            i += 1


def build_tiny_bundle(checkpoint: str, out: Path) -> Path:
    """A bundle with the checkpoint's tokenizer, labels and word shapes around a random
    2-layer, 32-wide BERT: reading, tokenising and writing dominate its annotate runs."""
    import shutil

    from transformers import AutoConfig, AutoModelForTokenClassification

    from ner_batch.export import Tolerances, export

    source = Path(checkpoint)
    tiny = out / "checkpoint"
    tiny.mkdir(parents=True, exist_ok=True)
    for name in ("nerbatch.json", "labels.json", "tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, tiny / name)
    config = AutoConfig.from_pretrained(source)
    config.update(
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        }
    )
    AutoModelForTokenClassification.from_config(config).save_pretrained(tiny)
    # Random weights: variant F1 comparisons are meaningless, so the checks are loosened.
    loose = Tolerances(int8_max_f1_drop=1.0, fp16_max_f1_drop=1.0, fp16_max_logit_diff=1e9)
    export(tiny, out / "bundle", variants=("fp32", "int8"), tolerances=loose)
    return out / "bundle"


def cpu_peak_gflops() -> tuple[float, str]:
    """Peak fp32 FLOP/s of this CPU: cores x clock x FLOPs per cycle (2 FMA units x 8 lanes
    x 2 with AVX2+FMA; 2 x 16 x 2 with AVX-512)."""
    flags = Path("/proc/cpuinfo").read_text()
    mhz = max(
        float(line.split(":")[1]) for line in flags.splitlines() if line.startswith("cpu MHz")
    )
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    cores = os.cpu_count() or 1
    return cores * mhz / 1000 * per_cycle, (
        f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle"
    )


def flops_per_token(bundle: str, seq: float) -> float:
    """2 x the MatMul/Gemm weights per token, plus attention scores and mixing
    (2 x 2 x seq x hidden per layer), read from the fp32 graph."""
    import onnx
    from onnx import numpy_helper

    from ner_batch.bundle import load_bundle

    b = load_bundle(bundle)
    model = onnx.load(str(b.path / b.meta["variants"]["fp32"]["file"]))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    total, layers, hidden = 0, 0, 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Attention") and len(node.input) > 1:
            w = weights.get(node.input[1])
            if w is not None and w.ndim == 2:
                total += 2 * w.size
                if node.op_type == "Attention":
                    layers += 1
                    hidden = w.shape[0]
    return total + layers * 4 * seq * hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--result")
    parser.add_argument("--checkpoint", default="runs/minilm")
    parser.add_argument("--bundle", default="export/minilm")
    parser.add_argument("--data", default="../shared/data/conll2003")
    parser.add_argument("--variant", default="auto")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: annotate rows use the fp16 variant on CUDAExecutionProvider "
        "(needs onnxruntime-gpu and a GPU)",
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--streams", type=int, default=None, help="annotate --streams")
    parser.add_argument("--runtime", default="auto", help="annotate --runtime (its rows)")
    parser.add_argument(
        "--isa-caps",
        default="",
        help="Also run the default CLI with ONEDNN_MAX_CPU_ISA set to each of these (e.g. "
        "AVX2,AVX512_CORE_VNNI): what `--runtime auto` chooses on such CPUs, and its speed",
    )
    parser.add_argument(
        "--engine",
        default="local",
        help="extra engines, comma-separated: ray adds a row for annotate --engine ray (a local "
        "Ray cluster, --num-workers actors), spark one for --engine spark on local[2]",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--copies", type=int, default=6, help="the CoNLL test sentences this many times over"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--corpus")
    parser.add_argument(
        "--fast-bundle",
        help="Add a row for this bundle's int8 (e.g. one exported with --int8-ops "
        "matmul+attention from the same checkpoint)",
    )
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument(
        "--skip",
        default="",
        help="Leave out the rows whose names contain any of these comma-separated words "
        '(e.g. "streams 2,bf16,fp32" for a shorter run)',
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="Rounds over every system; each row is its median round (default 3)",
    )
    parser.add_argument(
        "--scaling-only", action="store_true", help="Only the --scaling/--tiny-scaling tables"
    )
    parser.add_argument("--scaling", default="", help="MB sizes with the real bundle, e.g. 5,20")
    parser.add_argument(
        "--tiny-bundle",
        help="A tiny random bundle for --tiny-scaling; `auto` builds one from --checkpoint's "
        "tokenizer and labels",
    )
    parser.add_argument("--tiny-scaling", default="", help="MB sizes with the tiny bundle")
    parser.add_argument(
        "--spacy-python",
        help="Add a spaCy row, run by this Python (one with spaCy and --spacy-model installed, "
        "e.g. .venv-spacy/bin/python from `make install-spacy`)",
    )
    parser.add_argument("--spacy-model", default="en_core_web_sm")
    parser.add_argument("--texts", help=argparse.SUPPRESS)  # the spaCy worker's input
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    if args.worker:
        result = WORKERS[args.worker](args)
        peaks = [result.get("peak_rss_mb"), own_peak_rss_mb()]
        result["peak_rss_mb"] = max((p for p in peaks if p is not None), default=None)
        Path(args.result).write_text(json.dumps(result))
        return

    from ner_batch.bundle import load_bundle
    from ner_batch.runtimes import usable

    data = Path(args.data)
    if args.tiny_bundle == "auto" and args.tiny_scaling:
        tiny_dir = tempfile.TemporaryDirectory()  # removed when the driver exits
        args.tiny_bundle = str(build_tiny_bundle(args.checkpoint, Path(tiny_dir.name)))
    common = {
        "bundle": args.bundle,
        "data": args.data,
        "copies": args.copies,
        "threads": args.threads,
        "device": args.device,
    }
    if not args.scaling_only:
        tokens = count_tokens(args.bundle, data, args.copies)
        # The default variant: int8 on CPU, fp16 on CUDA.
        fast = "fp16" if args.device == "cuda" else "int8"
        # (name, run); a result's own "name" (the spaCy row: version and setting) takes precedence
        systems: list[tuple[str, Callable[[], dict]]] = []
        if not args.skip_pipeline:
            systems.append(
                (
                    f"HF pipeline, PyTorch fp32{' on CUDA' if fast == 'fp16' else ''} (baseline)",
                    lambda: spawn(
                        "pipeline", checkpoint=args.checkpoint, data=args.data, copies=args.copies
                    ),
                )
            )
        runtimes = usable(load_bundle(args.bundle), "int8")[0]
        with_openvino = fast == "int8" and "openvino" in runtimes
        systems.append(
            (
                f"nerbatch annotate CLI, default options ({fast}, --runtime auto)",
                lambda: spawn("cli", bundle=args.bundle, data=args.data, copies=args.copies),
            )
        )
        systems.append(
            (
                f"nerbatch annotate, {fast} on onnxruntime",
                lambda: spawn("annotate", variant="auto", runtime="onnxruntime", **common),
            )
        )
        systems.append(
            (
                f"nerbatch annotate, {fast} on onnxruntime, --streams 2",
                lambda: spawn(
                    "annotate", variant="auto", runtime="onnxruntime", streams=2, **common
                ),
            )
        )
        if with_openvino:
            for variant in ("int8", "bf16"):
                systems.append(
                    (
                        f"nerbatch annotate, {variant} on openvino",
                        functools.partial(
                            spawn, "annotate", variant=variant, runtime="openvino", **common
                        ),
                    )
                )
        if args.fast_bundle:
            systems.append(
                (
                    "nerbatch annotate, int8 of `export --int8-ops matmul+attention`",
                    lambda: spawn(
                        "annotate", variant="int8", **{**common, "bundle": args.fast_bundle}
                    ),
                )
            )
        systems.append(
            (
                "nerbatch annotate, fp32 on onnxruntime",
                lambda: spawn("annotate", variant="fp32", **common),
            )
        )
        engines = set(args.engine.split(",")) - {"local"}
        unknown = engines - {"ray", "spark"}
        if unknown:
            raise SystemExit(f"--engine: unknown engines {sorted(unknown)}; expected ray, spark")
        if "spark" in engines:
            systems.append(
                (
                    f"nerbatch annotate --engine spark, {fast}, local[2], 1 task x 2 threads",
                    lambda: spawn(
                        "annotate", variant="auto", engine="spark", **{**common, "threads": 2}
                    ),
                )
            )
        if "ray" in engines:
            systems.append(
                (
                    f"nerbatch annotate --engine ray, {fast}, {args.num_workers} workers",
                    lambda: spawn(
                        "annotate",
                        variant="auto",
                        engine="ray",
                        num_workers=args.num_workers,
                        **common,
                    ),
                )
            )
        if args.spacy_python:
            systems.append(
                ("spaCy", lambda: spacy_row(args.spacy_python, args.spacy_model, data, args.copies))
            )
        systems.append(
            (
                f"bare ORT {fast} loop, model time only",
                lambda: spawn("bare", variant=fast, batch_size=32, **common),
            )
        )
        if with_openvino:
            for variant in ("int8", "bf16"):
                systems.append(
                    (
                        f"bare OpenVINO {variant} loop, model time only",
                        functools.partial(
                            spawn, "bare-openvino", variant=variant, batch_size=32, **common
                        ),
                    )
                )
        skipped = [word for word in args.skip.split(",") if word]
        systems = [(n, run) for n, run in systems if not any(w in n for w in skipped)]
        # A cache of runtime choices and compiled models of this run's own (not the user's): the
        # first CLI run probes and fills it, as a first run on a machine does; the rounds then
        # start as every later run does.
        cache = tempfile.TemporaryDirectory(prefix="nerbatch-cache-")
        os.environ["NERBATCH_CACHE"] = cache.name
        first = spawn("cli", bundle=args.bundle, data=args.data, copies=args.copies)
        print(
            f"first CLI run on this machine (probing, compiling): start-up "
            f"{first['wall'] - first['seconds']:.1f} s, whole process {first['wall']:.1f} s",
            flush=True,
        )
        # Rounds of every system in turn, so that a slower spell of a shared machine hits every
        # row alike; each row reports its median round (and the range).
        results: list[list[dict]] = [[] for _ in systems]
        for round_ in range(1, args.repeat + 1):
            for (name, run), done in zip(systems, results, strict=True):
                done.append(run())
                label = done[-1].get("name", name)
                print(
                    f"round {round_}/{args.repeat}: {label}: "
                    f"{tokens / done[-1]['seconds']:,.0f} tokens/s",
                    flush=True,
                )
        rows = []
        for (name, _), done in zip(systems, results, strict=True):
            ordered = sorted(done, key=lambda r: r["seconds"])
            r = ordered[len(ordered) // 2]
            r["slowest"], r["fastest"] = ordered[-1]["seconds"], ordered[0]["seconds"]
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in done)
            rows.append((r.get("name", name), r))
        base = rows[0][1]["seconds"] if not args.skip_pipeline else None
        peak, peak_how = cpu_peak_gflops()
        print(
            f"\nCoNLL-2003 test, {rows[0][1]['documents']} sentences as documents, {tokens} "
            f"sub-word tokens; CPU: {describe_cpu()}"
        )
        print(f"median of {args.repeat} rounds; range: slowest-fastest round")
        print("| system | docs/s | tokens/s | range | x baseline | load s | peak RSS MB | F1 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in rows:
            f1 = f"{100 * r['f1']:.2f}" if "f1" in r else "-"
            load = f"{r['wall'] - r['seconds']:.1f}" if "wall" in r else "-"
            clocks = [("", "seconds")]
            if "runtime_choice" in r:  # the CLI: the whole process, and its run's own clock
                clocks = [(", whole process", "wall"), (", the run's own clock", "seconds")]
            for suffix, clock in clocks:
                ratio = f"{base / r[clock]:.2f}" if base else "-"
                spread = (
                    f"{tokens / r['slowest']:,.0f}-{tokens / r['fastest']:,.0f}"
                    if clock == "seconds"
                    else "-"
                )
                print(
                    f"| {name}{suffix} | {r['documents'] / r[clock]:,.0f} | "
                    f"{tokens / r[clock]:,.0f} | {spread} | {ratio} | {load} | "
                    f"{r['peak_rss_mb']:,.0f} | {f1} |"
                )
        print(
            "\nend to end / bare model loop on the same batches (own clocks, median rounds; "
            "the loop's first pass meets every shape cold as a process does, its second is warm):"
        )
        for runtime, bare in (("onnxruntime", "bare ORT"), ("openvino", "bare OpenVINO")):
            e2e = next((r for n, r in rows if n.endswith(f"{fast} on {runtime}")), None)
            loop = next((r for n, r in rows if n.startswith(f"{bare} {fast} loop")), None)
            if e2e and loop:
                print(
                    f"- {runtime}: {loop['cold_seconds'] / e2e['seconds']:.2f} against the cold "
                    f"pass, {loop['seconds'] / e2e['seconds']:.2f} against the warm pass"
                )
        seq = tokens / rows[0][1]["documents"] + 2
        per_token = flops_per_token(args.bundle, seq)
        default = rows[1 if base else 0][1]
        achieved = tokens / default["seconds"] * per_token / 1e9
        print(
            f"\nefficiency: {tokens / default['seconds']:,.0f} tokens/s x {per_token / 1e6:.1f} "
            f"MFLOP/token (2 x MatMul weights + attention at {seq:.0f} tokens) = "
            f"{achieved:.1f} GFLOP/s of a {peak:.0f} GFLOP/s fp32 peak ({peak_how}): "
            f"{100 * achieved / peak:.1f}% (int8 ops counted as FLOPs: VNNI's int8 peak is "
            "about 4x the fp32 one)"
        )

    if not args.scaling_only:
        for name, r in rows:
            if "runtime_choice" in r:
                print(
                    f"\n{name}: --runtime auto chose {r['runtime_choice']['runtime']}, "
                    f"{r['runtime_choice']['reason']}"
                )
    if args.isa_caps and not args.scaling_only:
        base_row = rows[0][1] if not args.skip_pipeline else None
        rounds = range(args.repeat)
        print(
            "\n`--runtime auto` with OpenVINO's oneDNN capped (ONEDNN_MAX_CPU_ISA), default CLI, "
            f"median of {args.repeat} runs:"
        )
        print(
            "| ONEDNN_MAX_CPU_ISA | probe onnxruntime tok/s | probe openvino tok/s | chosen "
            "| annotate tokens/s | x baseline |"
        )
        print("| --- | ---: | ---: | --- | ---: | ---: |")
        for cap in ["none", *args.isa_caps.split(",")]:
            env = {} if cap == "none" else {"ONEDNN_MAX_CPU_ISA": cap}
            runs = [
                spawn("cli", env=env, bundle=args.bundle, data=args.data, copies=args.copies)
                for _ in rounds
            ]
            r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]  # the median run
            speeds = r["runtime_choice"].get("tokens_per_second", {})
            ratio = f"{base_row['seconds'] / r['seconds']:.2f}" if base_row else "-"
            print(
                f"| {cap} | {speeds.get('onnxruntime', 0):,} | {speeds.get('openvino', 0):,} | "
                f"{r['runtime_choice']['runtime']} | {tokens / r['seconds']:,.0f} | {ratio} |",
                flush=True,
            )

    for label, bundle, sizes in (
        ("real bundle", args.bundle, args.scaling),
        ("tiny random bundle", args.tiny_bundle, args.tiny_scaling),
    ):
        if not sizes or not bundle:
            continue
        print(f"\nscaling, {label}:")
        print("| corpus MB | documents | tokens | tokens/s | peak RSS MB |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for size in [float(s) for s in sizes.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                corpus = Path(tmp) / f"corpus-{size}mb.jsonl"
                make_corpus(corpus, size, data)
                r = spawn(
                    "annotate", variant="auto", corpus=str(corpus), **{**common, "bundle": bundle}
                )
            print(
                f"| {size:g} | {r['documents']:,} | {r['tokens']:,} | "
                f"{r['tokens'] / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
