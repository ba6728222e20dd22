"""The Airflow DAGs of jobs/airflow, run with real Airflow 3 (`dag.test()`) from `.venv-airflow`
(`make install-airflow`), calling this environment's `nerbatch` on a tiny bundle and partition.

Starting Airflow costs more CPU than the runs themselves (about 8 s on 2 cores), so the `report`
fixture makes every scenario's DAG run in one Airflow process and each test checks one scenario.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import DOCS, write_jsonl

from ner_batch.output import SPAN_SCHEMA

ROOT = Path(__file__).parents[1]
DAG_FOLDER = ROOT / "jobs" / "airflow"
RUNNER = Path(__file__).with_name("airflow_runner.py")
RUN_MARKER = "##### airflow_runner: dag.test"  # as in airflow_runner.py
AIRFLOW_VENV = Path(os.environ.get("NERBATCH_AIRFLOW_VENV", ROOT / ".venv-airflow"))
AIRFLOW_PYTHON = AIRFLOW_VENV / "bin" / "python"
NERBATCH = Path(sys.executable).parent / "nerbatch"
DAY = "2026-01-01"

pytestmark = pytest.mark.skipif(
    not AIRFLOW_PYTHON.exists(),
    reason=f"no Airflow virtualenv at {AIRFLOW_VENV}: create it with `make install-airflow`",
)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment for Airflow processes: a fresh AIRFLOW_HOME with a migrated sqlite database,
    DAGs from jobs/airflow, one retry without delay."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "NERBATCH_RETRIES": "1",
        "NERBATCH_RETRY_DELAY_MINUTES": "0",
    }
    migrate = subprocess.run(
        [str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


def run_dags(env: dict[str, str], *runs: tuple[str, dict]) -> dict:
    """Load the DAG folder and run each (dag_id, run_conf) with `dag.test()` for DAY, in one
    Airflow process. Returns its report: dags, import_errors and, for each run, dag_id, state,
    tasks ({task_id: [state, tries]}) and the run's log."""
    args = [arg for dag_id, conf in runs for arg in (dag_id, DAY, json.dumps(conf))]
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), str(RUNNER), str(DAG_FOLDER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = json.loads(result.stdout.splitlines()[-1])
    logs = re.split(rf"^{re.escape(RUN_MARKER)} \d+$", result.stdout, flags=re.MULTILINE)[1:]
    for run, log in zip(report["runs"], logs, strict=True):
        run["log"] = log
    return report


def tail(run: dict) -> str:
    """The end of a run's Airflow log, for assertion messages."""
    return run["log"][-6000:]


def partition(root: Path, *extra_lines: str) -> Path:
    """<root>/in/ds=DAY/news.jsonl: the tiny documents, then `extra_lines` as they are."""
    day = root / "in" / f"ds={DAY}"
    news = write_jsonl(day / "news.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])
    with news.open("a") as f:
        f.writelines(line + "\n" for line in extra_lines)
    return day


def annotate_conf(tiny_bundle: Path, root: Path, **params) -> dict:
    return {
        "nerbatch": str(NERBATCH),
        "model": str(tiny_bundle),
        "input_root": str(root / "in"),
        "output_root": str(root / "out"),
        "annotate_options": ["--variant", "fp32"],
        **params,
    }


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, tiny_bundle, tiny_conll) -> dict[str, tuple[Path, str, dict]]:
    """name -> (its folder, dag_id, run_conf), inputs written."""
    root = tmp_path_factory.mktemp("scenarios")
    partition(root / "daily")
    partition(root / "rejects", "not json")
    rejects_in = str(root / "rejects" / "in")
    runs = {
        "daily": ("nerbatch_annotate", annotate_conf(tiny_bundle, root / "daily")),
        "rejects_fail": (
            "nerbatch_annotate",
            annotate_conf(
                tiny_bundle, root / "rejects_fail", input_root=rejects_in, fail_on_reject=True
            ),
        ),
        # The param left at its default: false.
        "rejects_pass": (
            "nerbatch_annotate",
            annotate_conf(tiny_bundle, root / "rejects_pass", input_root=rejects_in),
        ),
        # No partition for the day: exit 1.
        "missing": ("nerbatch_annotate", annotate_conf(tiny_bundle, root / "missing")),
        # A relative output root would land in the task's temporary directory.
        "relative": (
            "nerbatch_annotate",
            annotate_conf(tiny_bundle, root / "relative", output_root="out"),
        ),
        # A wrong option: click's usage error, exit 2.
        "usage": (
            "nerbatch_annotate",
            annotate_conf(tiny_bundle, root / "usage", annotate_options=["--nope"]),
        ),
        "score": (
            "nerbatch_score",
            {
                "nerbatch": str(NERBATCH),
                "model": str(tiny_bundle),
                "gold": str(tiny_conll),
                "report_dir": str(root / "score" / "reports"),
                "score_options": ["--variant", "fp32"],
            },
        ),
    }
    return {name: (root / name, dag_id, conf) for name, (dag_id, conf) in runs.items()}


@pytest.fixture(scope="module")
def report(airflow_env, scenarios) -> dict:
    """The runner's report with `runs` as {scenario name: run}."""
    report = run_dags(airflow_env, *((dag_id, conf) for _, dag_id, conf in scenarios.values()))
    report["runs"] = dict(zip(scenarios, report["runs"], strict=True))
    return report


def test_the_dag_folder_loads(report):
    assert report["import_errors"] == {}
    assert report["dags"] == ["nerbatch_annotate", "nerbatch_score"]


def test_a_daily_run_annotates_the_partition(report, scenarios, tiny_bundle):
    run = report["runs"]["daily"]
    assert (run["state"], run["tasks"]) == ("success", {"annotate": ["success", 1]}), tail(run)
    root = scenarios["daily"][0]
    day, out = root / "in" / f"ds={DAY}", root / "out" / f"ds={DAY}"
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["counts"]["documents"] == manifest["counts"]["annotated"] == len(DOCS)
    assert manifest["counts"]["rejected"] == 0
    assert manifest["variant"] == "fp32"
    spans = pq.read_table(out)
    assert spans.schema == SPAN_SCHEMA
    assert spans.num_rows == manifest["counts"]["spans"] > 0
    texts = {f"d{i}": text for i, text in enumerate(DOCS)}
    for row in spans.to_pylist():
        assert row["source"] == str(day / "news.jsonl")
        assert row["text"] == texts[row["doc_id"]][row["start"] : row["end"]]
    # Exactly what the CLI writes when run by hand.
    by_hand = root / "by_hand"
    subprocess.run(
        [NERBATCH, "annotate", day, by_hand, "--model", tiny_bundle, "--variant", "fp32"],
        check=True,
        capture_output=True,
    )
    assert pq.read_table(by_hand).to_pylist() == spans.to_pylist()


def test_rejects_with_fail_on_reject_fail_the_task_without_retry(report, scenarios):
    failed, passed = report["runs"]["rejects_fail"], report["runs"]["rejects_pass"]
    # Exit 3 is final: one try although retries=1.
    assert (failed["state"], failed["tasks"]) == ("failed", {"annotate": ["failed", 1]})
    assert "nerbatch exited 3: documents were rejected and fail_on_reject is set" in failed["log"]
    assert (passed["state"], passed["tasks"]) == ("success", {"annotate": ["success", 1]})
    for name in "rejects_fail", "rejects_pass":
        out = scenarios[name][0] / "out" / f"ds={DAY}"
        # Either way the output is complete, the reject counted and kept.
        assert (out / "_SUCCESS").exists()
        counts = json.loads((out / "_manifest.json").read_text())["counts"]
        assert counts["rejected"] == 1 and counts["annotated"] == len(DOCS)
        assert pq.read_table(out / "_rejects").num_rows == 1


def test_an_error_is_retried(report):
    run = report["runs"]["missing"]
    # retries=1: two tries.
    assert (run["state"], run["tasks"]) == ("failed", {"annotate": ["failed", 2]}), tail(run)
    assert run["log"].count("nerbatch exited 1: Error:") == 2


def test_bad_params_and_options_fail_without_retry(report):
    relative, usage = report["runs"]["relative"], report["runs"]["usage"]
    assert relative["tasks"] == usage["tasks"] == {"annotate": ["failed", 1]}
    message = "param output_root must be an absolute path or a URI, got 'out'"
    assert message in relative["log"]
    assert "nerbatch exited 2 (bad usage: check annotate_options" in usage["log"]


def test_weekly_score_writes_dated_reports(report, scenarios):
    run = report["runs"]["score"]
    assert (run["state"], run["tasks"]) == ("success", {"score": ["success", 1]}), tail(run)
    reports = scenarios["score"][0] / "reports" / f"ds={DAY}"
    assert sorted(p.name for p in reports.iterdir()) == [
        "score.confusion.png",
        "score.json",
        "score.md",
        "score.per_type.png",
    ]
    scores = json.loads((reports / "score.json").read_text())
    assert scores["n_sentences"] == 3 and 0 <= scores["default"]["micro"]["f1"] <= 1
    assert "| PER |" in (reports / "score.md").read_text()


@pytest.mark.slow
def test_a_timed_out_try_stops_nerbatch_and_the_retry_resumes(airflow_env, tiny_bundle, tmp_path):
    """Tries of 6 s over a partition that takes longer: each is stopped with SIGTERM after
    committing its parts, the next resumes, and the result is that of one uninterrupted run.

    100,000 documents take about 17 s in one run on a quiet 2-core machine (30,000 once took
    5.2 s, under one try); retries are generous because a loaded machine gets less done per try."""
    day = tmp_path / "in" / f"ds={DAY}"
    write_jsonl(
        day / "news.jsonl",
        [{"id": str(i), "text": f"{DOCS[i % 4]} Day {i} ."} for i in range(100_000)],
    )
    options = ["--variant", "fp32", "--part-docs", "1000"]
    env = {
        **airflow_env,
        "NERBATCH_ANNOTATE_TIMEOUT_MINUTES": "0.1",
        "NERBATCH_RETRIES": "40",
    }
    conf = annotate_conf(tiny_bundle, tmp_path, annotate_options=options)
    [run] = run_dags(env, ("nerbatch_annotate", conf))["runs"]
    state, tries = run["tasks"]["annotate"]
    assert state == "success" and tries >= 2, tail(run)
    assert run["log"].count("Process timed out") == tries - 1
    assert "stopped by SIGTERM after" in run["log"] and '"event": "resume"' in run["log"]
    by_hand = tmp_path / "by_hand"
    subprocess.run(
        [NERBATCH, "annotate", day, by_hand, "--model", tiny_bundle, *options],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out" / f"ds={DAY}"
    assert pq.read_table(by_hand).to_pylist() == pq.read_table(out).to_pylist()
