"""The openvino variant and `--runtime`: export (NNCF int8 IR, checked like the other variants),
annotate on either runtime through the real CLI with the default options, the `auto` probe and
its record in the manifest, resumes that keep the recorded runtime, and a lean install without
OpenVINO running the same bundle on ONNX Runtime.

Speed is not asserted here (benchmarks/throughput.py measures it); the tiny random model is all
per-call overhead, on which ONNX Runtime wins the probe by a wide margin."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import write_bad_inputs, write_jsonl
from test_kills import kill_once_begun, rows
from test_reliability import cli, sorted_rejects, write_corpus

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
pytest.importorskip("nncf", reason="the [openvino] extra is not installed")

# A process where `import openvino` fails, as in the lean runtime install.
WITHOUT_OPENVINO = (
    "import sys; sys.modules['openvino'] = None; from ner_batch.cli import main; main()"
)


def meta(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def annotate(corpus, out, *options, python=None, **kwargs) -> subprocess.CompletedProcess:
    command = cli("annotate", str(corpus), str(out), *options)
    if python is not None:
        command = [sys.executable, "-c", python, *command[3:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def test_export_records_the_openvino_variant_with_checksums_and_gates(ov_bundle):
    from ner_batch.bundle import load_bundle, sha256_of

    entry = meta(ov_bundle)["variants"]["openvino"]
    assert entry["file"] == "model.openvino.xml"
    assert entry["weights"]["file"] == "model.openvino.bin"
    assert entry["sha256"] == sha256_of(ov_bundle / "model.openvino.xml")
    assert entry["weights"]["sha256"] == sha256_of(ov_bundle / "model.openvino.bin")
    assert entry["precision"] == "int8" and entry["runtime"] == "openvino"
    assert entry["calibration_batches"] >= 1
    # The same gates as the other variants: logits, argmax agreement and dev F1 against PyTorch.
    assert entry["max_abs_logit_diff"] < 0.5
    assert entry["argmax_agreement"] > 0.9
    assert "dev_f1" in entry and "dev_f1_drop" in entry
    load_bundle(ov_bundle).verify("openvino")


def test_calibration_feeds_are_the_batches_annotate_forms(tiny_bundle):
    from ner_batch.bundle import load_bundle
    from ner_batch.export import calibration_feeds
    from ner_batch.tagger import Tagger, TaggerOptions

    bundle = load_bundle(tiny_bundle)
    encoder = bundle.encoder()
    texts = [f"Mary visited Paris {'and London ' * (i % 7)}." for i in range(70)]
    feeds = calibration_feeds(encoder, bundle.labels, bundle.window(), texts)
    seen = []

    def record(ids, mask, types):
        seen.append(ids)
        return np.zeros((*ids.shape, len(bundle.labels)), dtype=np.float32)

    Tagger(encoder, bundle.labels, record, *bundle.window(), TaggerOptions()).tag(texts)
    assert [f["input_ids"].tolist() for f in feeds] == [s.tolist() for s in seen]
    assert len(feeds) == 3  # 70 documents in annotate's batches of 32


def test_default_annotate_records_the_probe_and_hostile_inputs_still_reject(ov_bundle, tmp_path):
    """Default options through the CLI on a bundle with the openvino variant: the probe times
    both runtimes, logs and records its choice and why; rows equal an explicit run on the chosen
    runtime; bad inputs are rejects as on ONNX Runtime."""
    inputs = tmp_path / "in"
    write_bad_inputs(inputs)
    write_jsonl(
        inputs / "z.jsonl", [{"id": str(i), "text": "Mary met John in Paris ."} for i in range(50)]
    )
    out = tmp_path / "out.parquet"
    result = annotate(inputs, out, "--model", str(ov_bundle))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    runtime = next(e for e in events if e["event"] == "runtime")
    assert "timed here" in runtime["message"]
    choice = manifest(out)["runtime_choice"]
    assert set(choice["tokens_per_second"]) == {"onnxruntime", "openvino"}
    assert choice["runtime"] in ("onnxruntime", "openvino")
    assert choice["cpu"]["cores"] >= 1
    assert manifest(out)["settings"]["runtime"] == choice["runtime"]
    assert manifest(out)["summary"]["runtime"] == choice["runtime"]
    assert manifest(out)["counts"]["rejected"] > 0

    same = tmp_path / "same.parquet"
    explicit = annotate(inputs, same, "--model", str(ov_bundle), "--runtime", choice["runtime"])
    assert explicit.returncode == 0, explicit.stderr
    assert rows(same) == rows(out)
    assert sorted_rejects(same) == sorted_rejects(out)


def test_openvino_and_onnxruntime_runs_give_the_same_documents_and_spans(ov_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "in", 600)
    outs = {}
    for runtime in ("openvino", "onnxruntime"):
        outs[runtime] = tmp_path / f"{runtime}.parquet"
        result = annotate(corpus, outs[runtime], "--model", str(ov_bundle), "--runtime", runtime)
        assert result.returncode == 0, result.stderr
        assert manifest(outs[runtime])["settings"]["runtime"] == runtime
        assert manifest(outs[runtime])["runtime_choice"]["reason"] == f"--runtime {runtime}"
    a, b = (pq.read_table(o) for o in outs.values())
    assert a.schema == b.schema
    assert manifest(outs["openvino"])["counts"]["documents"] == 600
    # Every document accounted for alike (annotated or rejected), whichever runtime tagged it.
    counts = [
        {k: manifest(o)["counts"][k] for k in ("documents", "annotated", "rejected")}
        for o in outs.values()
    ]
    assert counts[0] == counts[1]
    # Both int8, quantized differently (static vs dynamic): spans agree on the tiny model's
    # near-ties mostly, and every span's text is its offsets' slice.
    spans = {
        o: set(
            zip(
                *(t.column(c).to_pylist() for c in ("doc_id", "start", "end", "label")), strict=True
            )
        )
        for o, t in zip("ab", (a, b), strict=True)
    }
    agreement = len(spans["a"] & spans["b"]) / max(1, len(spans["a"] | spans["b"]))
    assert agreement > 0.8, agreement


def test_a_resumed_auto_run_keeps_the_recorded_runtime(ov_bundle, tmp_path):
    """A run on OpenVINO stopped by SIGTERM, resumed with the default `--runtime auto` (which
    would pick ONNX Runtime for this tiny model): it continues on OpenVINO, rows identical to
    an uninterrupted OpenVINO run."""
    corpus = write_corpus(tmp_path / "in", 6000)
    options = ("--model", str(ov_bundle), "--part-docs", "1500")
    reference = tmp_path / "reference.parquet"
    assert annotate(corpus, reference, *options, "--runtime", "openvino").returncode == 0

    out = tmp_path / "out.parquet"
    process = subprocess.Popen(
        cli("annotate", str(corpus), str(out), *options, "--runtime", "openvino"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(3000):  # until the first part is committed
        if (out / "_manifest.json").exists() and manifest(out)["parts"]:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert not (out / "_SUCCESS").exists(), "stopped before the end"
    done = annotate(corpus, out, *options)  # --runtime auto
    assert done.returncode == 0, done.stderr
    assert "runtime openvino: recorded by the run that began the output" in done.stderr
    assert rows(out) == rows(reference)
    assert sorted_rejects(out) == sorted_rejects(reference)

    other = annotate(corpus, out.with_name("o.parquet"), *options, "--runtime", "openvino")
    assert other.returncode == 0
    (out.with_name("o.parquet") / "_SUCCESS").unlink()
    refused = annotate(corpus, out.with_name("o.parquet"), *options, "--runtime", "onnxruntime")
    assert refused.returncode == 1
    assert "runtime 'openvino', now 'onnxruntime'" in refused.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--runtime", "openvino", "--variant", "fp16"), "openvino does not run fp16 models"),
        (("--runtime", "onnxruntime", "--variant", "bf16"), "onnxruntime does not run bf16"),
        (("--runtime", "openvino", "--device", "cuda", "--variant", "int8"), "on the CPU only"),
    ],
)
def test_runtime_option_errors_are_one_line_exit_2(ov_bundle, tmp_path, options, message):
    (tmp_path / "a.txt").write_text("Mary in Paris")
    result = annotate(tmp_path / "a.txt", tmp_path / "out", "--model", str(ov_bundle), *options)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bundle_without_the_openvino_variant_says_how_to_get_it(tiny_bundle, tmp_path):
    (tmp_path / "a.txt").write_text("Mary in Paris")
    result = annotate(
        tmp_path / "a.txt", tmp_path / "out", "--model", str(tiny_bundle), "--runtime", "openvino"
    )
    assert result.returncode == 2
    assert "has no openvino variant" in result.stderr
    auto = annotate(tmp_path / "a.txt", tmp_path / "out2", "--model", str(tiny_bundle))
    assert auto.returncode == 0, auto.stderr
    assert manifest(tmp_path / "out2")["settings"]["runtime"] == "onnxruntime"


def test_without_openvino_installed_the_bundle_runs_on_onnxruntime(ov_bundle, tmp_path):
    """The lean runtime install: `import openvino` fails; the same bundle runs on ONNX Runtime
    (auto says why), and asking for OpenVINO says what to install."""
    corpus = write_corpus(tmp_path / "in", 300)
    out = tmp_path / "out.parquet"
    result = annotate(corpus, out, "--model", str(ov_bundle), python=WITHOUT_OPENVINO)
    assert result.returncode == 0, result.stderr
    choice = manifest(out)["runtime_choice"]
    assert choice["runtime"] == "onnxruntime"
    assert "openvino is not installed" in choice["reason"]
    reference = tmp_path / "ort.parquet"
    assert (
        annotate(
            corpus, reference, "--model", str(ov_bundle), "--runtime", "onnxruntime"
        ).returncode
        == 0
    )
    assert rows(out) == rows(reference)
    asked = annotate(
        corpus,
        tmp_path / "o2",
        "--model",
        str(ov_bundle),
        "--runtime",
        "openvino",
        python=WITHOUT_OPENVINO,
    )
    assert asked.returncode == 2
    assert 'pip install "nerbatch[openvino]"' in asked.stderr


def test_a_changed_ir_weights_file_is_refused_before_any_work(ov_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(ov_bundle, bundle)
    weights = bundle / "model.openvino.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    (tmp_path / "a.txt").write_text("Mary in Paris")
    result = annotate(
        tmp_path / "a.txt", tmp_path / "out", "--model", str(bundle), "--runtime", "openvino"
    )
    assert result.returncode != 0
    assert "model.openvino.bin does not match its checksum" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bf16_runs_the_fp32_graph_on_openvino(ov_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "in", 200)
    out = tmp_path / "out.parquet"
    result = annotate(corpus, out, "--model", str(ov_bundle), "--variant", "bf16")
    assert result.returncode == 0, result.stderr
    assert manifest(out)["settings"]["variant"] == "bf16"
    assert manifest(out)["settings"]["runtime"] == "openvino"
    assert pq.read_table(out).num_rows > 0


def test_export_of_the_openvino_variant_without_nncf_names_the_extra(tiny_checkpoint, tmp_path):
    python = "import sys; sys.modules['nncf'] = None; from ner_batch.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", python, "export", str(tiny_checkpoint), "--out", str(tmp_path / "b")]
        + ["--variants", "int8,openvino"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "needs OpenVINO and NNCF" in result.stderr and "nerbatch[openvino]" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_probe_keeps_onnxruntime_unless_another_is_clearly_faster():
    from ner_batch.probe import MARGIN, tokens_per_second

    batches = [(np.zeros((4, 8), dtype=np.int64),) * 3]

    def slow(*arrays):
        time.sleep(0.02)

    def fast(*arrays):
        time.sleep(0.005)

    timed = {"onnxruntime": (slow, 1), "openvino": (fast, 2)}
    speeds = tokens_per_second(timed, batches, rounds=2)
    assert speeds["openvino"] > MARGIN * speeds["onnxruntime"]


def test_the_api_takes_a_runtime_and_equals_annotate(ov_bundle, tmp_path):
    import ner_batch

    texts = [f"Mary met John in Paris on day {i} ." for i in range(40)]
    annotator = ner_batch.load(str(ov_bundle), runtime="openvino")
    assert annotator.runtime == "openvino"
    got = annotator(texts)
    write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "out.parquet"
    assert (
        annotate(
            tmp_path / "in.jsonl", out, "--model", str(ov_bundle), "--runtime", "openvino"
        ).returncode
        == 0
    )
    table = pq.read_table(out).to_pylist()
    by_doc: dict[str, list] = {}
    for r in table:
        by_doc.setdefault(r["doc_id"], []).append((r["start"], r["end"], r["label"], r["score"]))
    for i, spans in enumerate(got):
        want = sorted(by_doc.get(str(i), []))
        assert sorted((s["start"], s["end"], s["label"], s["score"]) for s in spans) == want


def test_a_resume_where_the_recorded_runtime_cannot_run_says_so(ov_bundle, tmp_path):
    """Begun on OpenVINO, killed, resumed by a Python without OpenVINO: one clear error that
    names the recorded runtime, nothing written."""
    corpus = write_corpus(tmp_path / "in", 3000)
    out = tmp_path / "out.parquet"
    kill_once_begun(corpus, out, "--model", str(ov_bundle), "--runtime", "openvino")
    before = manifest(out)
    result = annotate(corpus, out, "--model", str(ov_bundle), python=WITHOUT_OPENVINO)
    assert result.returncode == 2, result.stderr
    assert "was begun with runtime openvino, which a resumed run keeps" in result.stderr
    assert "openvino is not installed" in result.stderr
    assert manifest(out) == before


def test_the_first_inference_of_a_process_runs_alone(ov_bundle, monkeypatch):
    # Two streams' first batches at once can deadlock in OpenVINO's binding (openvino_backend);
    # the first inference runs alone, the later ones concurrently.
    import threading

    from ner_batch import backends, openvino_backend

    monkeypatch.setattr(openvino_backend, "_FIRST_DONE", threading.Event())  # a fresh process
    inside, most, lock = [0], [], threading.Lock()

    def feed(names, ids, mask, types):
        with lock:
            inside[0] += 1
        time.sleep(0.3)
        with lock:
            most.append(inside[0])
            inside[0] -= 1
        return backends.feed(names, ids, mask, types)

    compiled = openvino_backend.compile_model(
        ov_bundle / meta(ov_bundle)["variants"]["openvino"]["file"], "f32", 0, 2
    )
    logits = openvino_backend.logits_fn(compiled, 0, 128, feed)
    batch = [
        np.full((2, 5), 7, dtype=np.int64),
        np.ones((2, 5), np.int64),
        np.zeros((2, 5), np.int64),
    ]

    def run_two() -> None:
        threads = [threading.Thread(target=logits, args=batch) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)

    run_two()
    assert most == [1, 1], "the first inference ran beside another"
    assert openvino_backend._FIRST_DONE.is_set()
    most.clear()
    run_two()
    assert max(most) == 2, "later inferences should run concurrently"
