"""The real pipeline on CoNLL-2003 with the default MiniLM: train 3 epochs, export, score on gold
and end to end from raw text. About 20 minutes on 2 CPU cores: marked slow, run by CI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ner_batch.cli import cli

pytestmark = pytest.mark.slow


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_minilm_pipeline_on_conll(tmp_path, conll_dir):
    data = conll_dir
    checkpoint, bundle = tmp_path / "minilm", tmp_path / "bundle"
    run(
        "train",
        "--train",
        str(data / "train.txt"),
        "--dev",
        str(data / "dev.txt"),
        "--out",
        str(checkpoint),
        "--epochs",
        "3",
    )
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3
    assert (checkpoint / "curves.png").stat().st_size > 0

    run("export", str(checkpoint), "--out", str(bundle), "--test", str(data / "test.txt"))
    meta = json.loads((bundle / "bundle.json").read_text())
    variants = meta["variants"]
    assert variants["fp32"]["max_abs_logit_diff"] <= 1e-3
    # This is the short 3-epoch run CI can afford, not the default 8-epoch recipe, whose int8
    # drop (0.14 F1, within the 0.3 target) benchmarks/quality.py measures. How much int8 loses
    # varies by model: 0.18 (all ops) vs 0.40 (MatMuls only) on this 3-epoch model, 0.44 vs 0.14
    # on the 8-epoch one. Here it only has to stay a small loss.
    assert variants["fp32"]["test_f1"] - variants["int8"]["test_f1"] <= 0.005

    on_gold = tmp_path / "gold.json"
    run("score", "--model", str(checkpoint), str(data / "test.txt"), "--json", str(on_gold))
    pytorch_f1 = json.loads(on_gold.read_text())["default"]["micro"]["f1"]
    assert pytorch_f1 >= 0.860

    corpus, spans = tmp_path / "test.jsonl", tmp_path / "spans.parquet"
    run("gold2corpus", str(data / "test.txt"), str(corpus), "--unit", "document")
    run("annotate", str(corpus), str(spans), "--model", str(bundle))
    end_to_end = tmp_path / "e2e.json"
    run("score", "--predictions", str(spans), str(data / "test.txt"), "--json", str(end_to_end))
    e2e_f1 = json.loads(end_to_end.read_text())["default"]["micro"]["f1"]
    # The default options run int8 on whichever runtime `--runtime auto` found faster here.
    runtime = json.loads((spans / "_manifest.json").read_text())["settings"]["runtime"]
    int8_on_gold = variants["openvino" if runtime == "openvino" else "int8"]["test_f1"]
    assert abs(e2e_f1 - int8_on_gold) <= 0.005, (runtime, e2e_f1, int8_on_gold)
    if "openvino" in variants:  # NNCF's static int8: within 0.3 F1 of fp32, like the others
        assert variants["fp32"]["test_f1"] - variants["openvino"]["test_f1"] <= 0.003
