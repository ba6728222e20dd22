"""benchmarks/throughput.py end to end on a tiny model, so the script that measures the
throughput targets keeps running: every row's worker, the rounds and medians, the scaling table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "throughput.py"


def test_throughput_table_on_a_tiny_model(tmp_path, tiny_checkpoint, ov_bundle, tiny_conll):
    """On a bundle with the openvino variant: the OpenVINO rows and the --isa-caps table too."""
    data = tmp_path / "conll"
    data.mkdir()
    for split in ("train", "test"):  # test: the timed texts; train: the scaling corpora's source
        shutil.copy(tiny_conll, data / f"{split}.txt")
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint",
            str(tiny_checkpoint),
            "--bundle",
            str(ov_bundle),
            "--data",
            str(data),
            "--repeat",
            "2",
            "--scaling",
            "0.02",
            "--isa-caps",
            "AVX2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    }
    names = [
        "HF pipeline, PyTorch fp32 (baseline)",
        "nerbatch annotate CLI, default options (int8, --runtime auto), the run's own clock",
        "nerbatch annotate, int8 on onnxruntime",
        "nerbatch annotate, int8 on onnxruntime, --streams 2",
        "nerbatch annotate, int8 on openvino",
        "nerbatch annotate, bf16 on openvino",
        "nerbatch annotate, fp32 on onnxruntime",
        "bare ORT int8 loop, model time only",
        "bare OpenVINO int8 loop, model time only",
        "bare OpenVINO bf16 loop, model time only",
    ]
    for name in names:
        assert name in rows, out
        docs_s, tokens_s, spread, ratio, _load, rss, _f1 = rows[name]
        slowest, fastest = (float(x.replace(",", "")) for x in spread.split("-"))
        assert 0 < slowest <= float(tokens_s.replace(",", "")) <= fastest
        assert float(rss.replace(",", "")) > 0
    assert rows[names[0]][3] == "1.00"
    # The CLI as a whole process (start-up included) beside its run's own clock, and its first
    # run on the machine (probing, an empty cache) before the rounds.
    whole = rows["nerbatch annotate CLI, default options (int8, --runtime auto), whole process"]
    assert 0 < float(whole[1].replace(",", "")) <= float(rows[names[1]][1].replace(",", ""))
    assert "first CLI run on this machine (probing, compiling): start-up" in out
    assert "end to end / bare model loop" in out and "- onnxruntime: " in out
    # Each system ran twice, in rounds.
    assert len(re.findall(r"^round [12]/2: ", out, re.M)) == 2 * len(names)
    # The pipeline and annotate fp32 score the same model: F1 is a number for both.
    assert float(rows[names[0]][6]) >= 0 and float(rows[names[6]][6]) >= 0
    assert "efficiency:" in out
    assert "CPU: " in out and "--runtime auto chose" in out
    for cap in ("none", "AVX2"):  # the probe's decision under each cap, and the run's speed
        probe_ort, probe_ov, chosen, tokens_s, _ratio = rows[cap]
        assert chosen in ("onnxruntime", "openvino")
        assert float(probe_ov.replace(",", "")) > 0 and float(tokens_s.replace(",", "")) > 0
    scaling = rows["0.02"]
    assert int(scaling[0].replace(",", "")) > 0 and float(scaling[3].replace(",", "")) > 0
