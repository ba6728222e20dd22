"""The cron wrapper, run for real with bash and flock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "jobs" / "cron" / "nerbatch-annotate.sh"

pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="flock is not installed")


def run_job(tiny_bundle: Path, partition: Path, out: Path, *extra: str):
    env = {
        **os.environ,
        "NERBATCH": str(Path(sys.executable).parent / "nerbatch"),
        "NERBATCH_MODEL": str(tiny_bundle),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(partition), str(out), "--variant", "fp32", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def partition(tmp_path: Path) -> Path:
    day = tmp_path / "in" / "ds=2026-11-24"
    day.mkdir(parents=True)
    (day / "news.jsonl").write_text(
        "".join(
            json.dumps({"id": str(i), "text": f"John Smith visited Paris on day {i} ."}) + "\n"
            for i in range(50)
        )
        + "not json\n"
    )
    return day


def test_twice_over_the_same_partition_second_is_a_noop(tiny_bundle, tmp_path):
    day = partition(tmp_path)
    out = tmp_path / "out" / "ds=2026-11-24"
    first = run_job(tiny_bundle, day, out)
    assert first.returncode == 0, first.stderr
    assert (out / "_SUCCESS").exists()
    events = [json.loads(line)["event"] for line in first.stderr.splitlines()]
    assert events[0] == "start" and events[-1] == "finished" and "done" in events
    manifest = json.loads((out / "_manifest.json").read_text())
    second = run_job(tiny_bundle, day, out)
    assert second.returncode == 0, second.stderr
    assert "already complete" in second.stdout
    assert json.loads((out / "_manifest.json").read_text()) == manifest


def test_rejects_with_fail_on_reject_exit_3(tiny_bundle, tmp_path):
    result = run_job(tiny_bundle, partition(tmp_path), tmp_path / "out", "--fail-on-reject")
    assert result.returncode == 3
    assert json.loads(result.stderr.splitlines()[-1])["event"] == "rejects"


def test_a_held_lock_skips_the_run_with_75(tiny_bundle, tmp_path):
    day = partition(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(["flock", str(out) + ".lock", "sleep", "30"])
    try:
        for _ in range(100):
            if Path(str(out) + ".lock").exists():
                break
        result = run_job(tiny_bundle, day, out)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 75
    assert json.loads(result.stderr.splitlines()[-1])["event"] == "skipped"
    assert not out.exists()


def test_usage_error():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr
