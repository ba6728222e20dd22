"""Airflow 3 DAGs that run the nerbatch CLI on a schedule. See docs/airflow.md.

nerbatch_annotate (daily, 02:15 UTC) tags the partition of day ds:

    nerbatch --log-format json annotate <input_root>/ds=<ds> <output_root>/ds=<ds>
        --model <model> [--fail-on-reject] [<annotate_options>...]

It runs once day ds has ended (a data-interval schedule: the run for ds=2026-01-01 starts on
2026-01-02 at 02:15), like jobs/cron/crontab.example.

nerbatch_score (weekly, Monday 04:00 UTC) scores the bundle on held-out CoNLL gold and keeps the
report of each week under its own date:

    nerbatch --log-format json score <gold> --model <model>
        --json <report_dir>/ds=<ds>/score.json --markdown <report_dir>/ds=<ds>/score.md
        [<score_options>...]                  (the PNG charts go beside score.md)

Params (per run: "Trigger DAG w/ config" or `run_conf`). Their defaults come from the environment
of the process that parses this file (the DAG processor), else from this table:

    param             environment variable   default
    nerbatch          NERBATCH               nerbatch (on the worker's PATH)
    model             NERBATCH_MODEL         /opt/nerbatch/export/minilm
    input_root        NERBATCH_INPUT_ROOT    /data/in
    output_root       NERBATCH_OUTPUT_ROOT   /data/out
    fail_on_reject    -                      false
    annotate_options  -                      [] (more `nerbatch annotate` options)
    gold              NERBATCH_GOLD          /data/gold/test.txt
    report_dir        NERBATCH_REPORT_DIR    /data/reports/nerbatch
    score_options     -                      [] (more `nerbatch score` options)

Paths are absolute (input_root and output_root may also be URIs such as s3://bucket/in): the
command runs in a temporary working directory.

Task settings, from the environment at parse time:

    NERBATCH_RETRIES                  3   retries of a failed try
    NERBATCH_RETRY_DELAY_MINUTES     10
    NERBATCH_ANNOTATE_TIMEOUT_MINUTES 360 execution timeout of one annotate try
    NERBATCH_SCORE_TIMEOUT_MINUTES    60

nerbatch's exit code decides the outcome of a try:

    0  success
    1  error (bad input or bundle, crash, stopped by SIGTERM): failed, retried; annotate resumes
       from its last committed part, so a retry redoes at most --part-docs documents
    2  bad usage (a wrong annotate_options entry): failed at once, no retry
    3  documents were rejected and fail_on_reject is true: failed at once, no retry (the output
       is complete; the rejects are in <output>/_rejects/)
    killed by a signal (out of memory): failed, retried

On the execution timeout, or when the task is stopped (marked failed, worker shut down), nerbatch
gets SIGTERM, commits what it has tagged and exits; the next try resumes.

This file imports no nerbatch code: the workers need only the `nerbatch` command.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import (
    DAG,
    BaseOperator,
    Context,
    CronDataIntervalTimetable,
    CronTriggerTimetable,
    Param,
)

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3 releases before they moved to the Task SDK
    from airflow.exceptions import AirflowException, AirflowFailException


def _env_minutes(name: str, default: float) -> timedelta:
    return timedelta(minutes=float(os.environ.get(name, default)))


RETRIES = int(os.environ.get("NERBATCH_RETRIES", 3))
RETRY_DELAY = _env_minutes("NERBATCH_RETRY_DELAY_MINUTES", 10)
ANNOTATE_TIMEOUT = _env_minutes("NERBATCH_ANNOTATE_TIMEOUT_MINUTES", 360)
SCORE_TIMEOUT = _env_minutes("NERBATCH_SCORE_TIMEOUT_MINUTES", 60)
# How long a stopped nerbatch gets to commit its current work before it is killed.
STOP_GRACE_SECONDS = 120

EXIT_OK, EXIT_USAGE, EXIT_REJECTS = 0, 2, 3  # and 1: an error


def _path_param(env: str, default: str, description: str) -> Param:
    return Param(os.environ.get(env, default), type="string", minLength=1, description=description)


def _command_params() -> dict[str, Param]:
    """Params of both DAGs (new objects for each: a DAG must not share its Params)."""
    return {
        "nerbatch": _path_param(
            "NERBATCH", "nerbatch", "The nerbatch command: an absolute path or a name on the PATH."
        ),
        "model": _path_param(
            "NERBATCH_MODEL", "/opt/nerbatch/export/minilm", "Model bundle directory."
        ),
    }


class NerbatchOperator(BaseOperator):
    """Runs `nerbatch --log-format json ARGUMENTS...` (ARGUMENTS from `arguments(context)`),
    logging its output line by line, and turns its exit code into the task's outcome (see the
    module docstring). Subclasses say which command."""

    ui_color = "#e8f0fe"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hook: SubprocessHook | None = None
        self._streaming = False  # execute is reading nerbatch's output

    def arguments(self, context: Context) -> list[str]:
        """The nerbatch command line after `--log-format json`."""
        raise NotImplementedError

    def execute(self, context: Context) -> None:
        command = [context["params"]["nerbatch"], "--log-format", "json", *self.arguments(context)]
        self._hook = SubprocessHook()
        self._streaming = True
        try:
            result = self._hook.run_command(command)
        finally:
            self._streaming = False
        check_exit_code(result.exit_code, result.output)

    def on_kill(self) -> None:
        """Stop nerbatch with SIGTERM: it commits what it has tagged and exits, and the retry
        resumes from there.

        Airflow calls this in two situations. When the task is stopped (marked failed, worker
        shut down), from its SIGTERM handler while execute is still reading nerbatch's output:
        execute then logs the rest and sees the exit code. On the execution timeout, after
        execute was interrupted: here we wait for nerbatch to stop and log what it said, and
        kill it if it has not stopped after STOP_GRACE_SECONDS.
        """
        process = self._hook.sub_process if self._hook else None
        if process is None or process.poll() is not None:
            return
        self._hook.send_sigterm()
        if self._streaming:
            return
        try:
            # Its last words fit in the pipe's buffer: no need to read while waiting.
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.log.warning(
                "nerbatch still running %ss after SIGTERM: killing it", STOP_GRACE_SECONDS
            )
            os.killpg(process.pid, signal.SIGKILL)
            return
        if process.stdout is not None:
            for line in process.stdout.read().decode(errors="backslashreplace").splitlines():
                self.log.info("%s", line)
        self.log.info("nerbatch stopped, exit code %s; a retry resumes", process.returncode)


RETRY_NOTE = "Retried while retries remain (annotate resumes from its last committed part)."


def check_exit_code(code: int, last_line: str) -> None:
    """Raise the exception that gives exit `code` of nerbatch its task outcome; `last_line` is
    the last line it printed (its `Error:` line when it failed)."""
    if code == EXIT_OK:
        return
    detail = f": {last_line}" if last_line else ""
    if code == EXIT_REJECTS:
        raise AirflowFailException(
            f"nerbatch exited 3: documents were rejected and fail_on_reject is set{detail}. "
            "The output is complete; see its _rejects/ folder. Not retried."
        )
    if code == EXIT_USAGE:
        raise AirflowFailException(
            f"nerbatch exited 2 (bad usage: check annotate_options / score_options){detail}. "
            "Not retried."
        )
    if code < 0:
        raise AirflowException(
            f"nerbatch was killed by {signal.Signals(-code).name}{detail}. {RETRY_NOTE}"
        )
    raise AirflowException(f"nerbatch exited {code}{detail}. {RETRY_NOTE}")


def _location(params: Mapping[str, Any], name: str, uri: bool = False) -> str:
    """Param `name`, checked to be an absolute local path (or, if `uri`, a URI such as s3://):
    a relative path would resolve in the task's temporary working directory."""
    value = str(params[name]).rstrip("/")
    if not (Path(value).is_absolute() or (uri and "://" in value)):
        expected = "an absolute path or a URI" if uri else "an absolute local path"
        raise AirflowFailException(f"param {name} must be {expected}, got {value!r}")
    return value


def _logical_day(context: Context) -> str:
    ds = context.get("ds")
    if not ds:
        raise AirflowFailException("this DAG needs a logical date: trigger the run with one")
    return ds


class AnnotatePartition(NerbatchOperator):
    """`nerbatch annotate` of the partition <input_root>/ds=<ds> into <output_root>/ds=<ds>."""

    def arguments(self, context: Context) -> list[str]:
        params, ds = context["params"], _logical_day(context)
        return [
            "annotate",
            f"{_location(params, 'input_root', uri=True)}/ds={ds}",
            f"{_location(params, 'output_root', uri=True)}/ds={ds}",
            "--model",
            _location(params, "model"),
            *(["--fail-on-reject"] if params["fail_on_reject"] else []),
            *params["annotate_options"],
        ]


class ScoreReport(NerbatchOperator):
    """`nerbatch score` of the bundle on the gold file, reports in <report_dir>/ds=<ds>/."""

    def execute(self, context: Context) -> None:
        # score writes its files into an existing folder.
        Path(self.report_folder(context)).mkdir(parents=True, exist_ok=True)
        super().execute(context)

    def report_folder(self, context: Context) -> str:
        return f"{_location(context['params'], 'report_dir')}/ds={_logical_day(context)}"

    def arguments(self, context: Context) -> list[str]:
        params, reports = context["params"], self.report_folder(context)
        return [
            "score",
            _location(params, "gold"),
            "--model",
            _location(params, "model"),
            "--json",
            f"{reports}/score.json",
            "--markdown",
            f"{reports}/score.md",
            *params["score_options"],
        ]


OPTIONS = {"type": "array", "items": {"type": "string"}}

with DAG(
    dag_id="nerbatch_annotate",
    description="Tag the day's partition with nerbatch annotate into a Parquet dataset.",
    schedule=CronDataIntervalTimetable("15 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    # annotate uses every core it is given: one day at a time.
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
    params={
        **_command_params(),
        "input_root": _path_param(
            "NERBATCH_INPUT_ROOT", "/data/in", "Holds one input folder per day: ds=YYYY-MM-DD."
        ),
        "output_root": _path_param(
            "NERBATCH_OUTPUT_ROOT", "/data/out", "Gets one Parquet dataset per day: ds=YYYY-MM-DD."
        ),
        "fail_on_reject": Param(
            False, type="boolean", description="Fail (without retries) if a document is rejected."
        ),
        "annotate_options": Param(
            [], **OPTIONS, description='More annotate options, e.g. ["--text-field", "body"].'
        ),
    },
    tags=["nerbatch"],
) as annotate_dag:
    AnnotatePartition(task_id="annotate", execution_timeout=ANNOTATE_TIMEOUT)


with DAG(
    dag_id="nerbatch_score",
    description="Score the model bundle on held-out CoNLL gold; one dated report per week.",
    schedule=CronTriggerTimetable("0 4 * * 1", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
    params={
        **_command_params(),
        "gold": _path_param("NERBATCH_GOLD", "/data/gold/test.txt", "Held-out CoNLL gold file."),
        "report_dir": _path_param(
            "NERBATCH_REPORT_DIR",
            "/data/reports/nerbatch",
            "Gets one folder of reports per run: ds=YYYY-MM-DD.",
        ),
        "score_options": Param(
            [], **OPTIONS, description='More score options, e.g. ["--variant", "fp32"].'
        ),
    },
    tags=["nerbatch"],
) as score_dag:
    ScoreReport(task_id="score", execution_timeout=SCORE_TIMEOUT)
