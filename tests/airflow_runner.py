"""Run DAGs of jobs/airflow with real Airflow: the tests call this with `.venv-airflow/bin/python`
(nerbatch is not installed there) and read the JSON object it prints last.

    python airflow_runner.py DAG_FOLDER [DAG_ID LOGICAL_DATE CONF_JSON]...

Needs AIRFLOW_HOME with a migrated database (`airflow db migrate`) and
AIRFLOW__CORE__DAGS_FOLDER=DAG_FOLDER. Loads DAG_FOLDER with a DagBag, then runs each DAG_ID once
with `dag.test()` for LOGICAL_DATE (YYYY-MM-DD, UTC) and run_conf CONF_JSON, and prints one line:
{"dags": [...], "import_errors": {...},
 "runs": [{"dag_id": ..., "state": ..., "tasks": {task_id: [state, tries]}}, ...]}.
Before run number i it prints the line "RUN_MARKER i", so that its log can be told apart.
Not a test module: pytest does not collect it (and could not import airflow).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from airflow.dag_processing.dagbag import DagBag

RUN_MARKER = "##### airflow_runner: dag.test"


def main(folder: str, *runs: str) -> None:
    bag = DagBag(dag_folder=folder)
    result = {"dags": sorted(bag.dag_ids), "import_errors": bag.import_errors, "runs": []}
    for i, (dag_id, day, conf) in enumerate(zip(runs[::3], runs[1::3], runs[2::3], strict=True)):
        print(f"{RUN_MARKER} {i}", flush=True)
        logical_date = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
        # A DAG parsed afresh for each run, as a worker does: a run's conf is merged into the
        # DAG's Param objects in place, so a second run of the same objects would inherit it.
        dag = DagBag(dag_folder=folder).dags[dag_id]
        run = dag.test(logical_date=logical_date, run_conf=json.loads(conf))
        tasks = {ti.task_id: [ti.state, ti.try_number] for ti in run.get_task_instances()}
        result["runs"].append({"dag_id": dag_id, "state": run.state, "tasks": tasks})
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
