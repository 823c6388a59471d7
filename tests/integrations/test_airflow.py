"""The Airflow operator, run through Airflow's own local runner (``dag.test()``), offline, with a
throwaway AIRFLOW_HOME and a SQLite metadata database. Runs in ``.venv-airflow`` (``make test-airflow``);
skipped where Airflow is not installed (the main suite)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCORER, expected_score, read_output, write_parquet_files

if importlib.util.find_spec("airflow") is None:
    pytest.skip("Airflow is not installed: `make test-airflow` runs these in .venv-airflow", allow_module_level=True)

# Airflow's own deprecation notes (and its dependencies') are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

ROWS = 8_000
LOGICAL = datetime(2026, 3, 1, tzinfo=UTC)

# Scores like SCORER; the attempt that finds no marker file stops itself half-way with SIGTERM, as a
# preempted worker would be, and holds the batch in the model past the grace period: the shards before it
# are committed, the rest is left to the next attempt, which resumes (whatever the machine's speed).
STOPPING_SCORER = SCORER + '''

import os
import signal
import threading

_real = Scorer.predict


def _predict(self, batch):
    marker = os.environ["STOP_MARKER"]
    if batch["customer_id"].min() >= 4_000 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait()  # until the grace period ends and the run exits 75
    return _real(self, batch)


Scorer.predict = _predict
'''


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh AIRFLOW_HOME with a migrated SQLite metadata database; Airflow reads its configuration when
    first imported, so the environment is set before that."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "SCARF_ANALYTICS": "false",
        "DO_NOT_TRACK": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.utils import db

    db.initdb(load_connections=False)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _job(folder: Path, path: str = "data/*.parquet", scorer: str = SCORER) -> Path:
    (folder / "scorer.py").write_text(scorer)
    job = folder / "job.toml"
    job.write_text(textwrap.dedent(f"""
        name = "scores"
        [input]
        path = "{path}"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["customer_id", "f0", "f1", "f2"]
        outputs = ["score"]
        [batch]
        size = 500
        [output]
        path = "out"
        [runtime]
        workers = 1
        grace_seconds = 2
        """))
    return job


def _run_dag(dag_id: str, **operator: Any) -> Any:
    """Run one InfermillOperator task through ``dag.test()``; return its task instance (refreshed)."""
    from airflow import DAG

    from infermill.integrations.airflow import InfermillOperator

    with DAG(dag_id, start_date=LOGICAL, schedule=None, catchup=False) as dag:
        InfermillOperator(task_id="score", retry_delay=timedelta(0), **operator)
    run = dag.test(execution_date=LOGICAL)
    ti = run.get_task_instance("score")
    ti.refresh_from_db()
    return ti


def _summary(ti: Any) -> dict[str, Any]:
    from infermill.integrations.airflow import SUMMARY_XCOM_KEY

    return ti.xcom_pull(task_ids="score", key=SUMMARY_XCOM_KEY)


def _assert_exact(folder: Path, table: Any) -> None:
    out = read_output(folder / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(ROWS))
    assert out.column("score").to_pylist() == pytest.approx(expected_score(table).tolist())


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferred"])
def test_success_returns_the_summary_and_fills_the_date(airflow_home: Path, tmp_path: Path, deferrable: bool) -> None:
    table = write_parquet_files(tmp_path / "data" / "2026-03-01", ROWS, 2)
    job = _job(tmp_path, path="data/{date}/*.parquet")
    # Synchronous: {date} defaults to the logical date. Deferred: given as a task param, rendered; the
    # param that names no placeholder of the job's path is Airflow's alone, not passed to infermill.
    params = {"date": "{{ ds }}", "team": "risk"} if deferrable else {}
    ti = _run_dag(f"ok_{deferrable}", job=str(job), deferrable=deferrable, poll_interval=0.2, retries=2,
                  summary_dir=str(tmp_path / "summaries"), params=params)
    assert ti.state == "success" and ti.try_number == 1
    summary = ti.xcom_pull(task_ids="score")  # the return value
    assert summary == _summary(ti)
    assert summary["state"] == "complete" and summary["exit_code"] == 0
    assert summary["rows_succeeded"] == ROWS and summary["rows_this_run"] == ROWS
    assert summary["params"] == {"date": "2026-03-01"}  # the logical date, into the path template
    assert summary["trigger"]["key"].startswith(f"airflow:ok_{deferrable}/score/")
    _assert_exact(tmp_path, table)


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferred"])
def test_exit_75_is_retried_and_the_retry_resumes(airflow_home: Path, tmp_path: Path, deferrable: bool) -> None:
    table = write_parquet_files(tmp_path / "data", ROWS, 2)
    marker = tmp_path / "stopped-once"
    job = _job(tmp_path, scorer=STOPPING_SCORER)
    ti = _run_dag(f"retry_{deferrable}", job=str(job), deferrable=deferrable, poll_interval=0.2, retries=2,
                  env={"STOP_MARKER": str(marker)}, summary_dir=str(tmp_path / "summaries"))
    assert marker.exists()  # the first attempt was stopped
    assert ti.state == "success" and ti.try_number == 2  # one retry, by the task's retries
    summary = ti.xcom_pull(task_ids="score")
    assert summary["state"] == "complete" and summary["rows_succeeded"] == ROWS
    assert 0 < summary["rows_this_run"] < ROWS  # resumed: the first attempt's committed shards were kept
    _assert_exact(tmp_path, table)


def test_exit_2_fails_without_retry(airflow_home: Path, tmp_path: Path) -> None:
    job = _job(tmp_path)  # no input files: an invalid input, exit 2
    ti = _run_dag("invalid", job=str(job), retries=3)
    assert ti.state == "failed" and ti.try_number == 1  # AirflowFailException: the retries were not used
    summary = _summary(ti)
    assert summary["state"] == "invalid" and summary["exit_code"] == 2
    assert summary["error"]["class"] == "InputError"


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferred"])
def test_killed_run_fails_without_retry(airflow_home: Path, tmp_path: Path, deferrable: bool) -> None:
    write_parquet_files(tmp_path / "data", ROWS, 2)
    job = _job(tmp_path)
    ti = _run_dag(f"killed_{deferrable}", job=str(job), retries=3, env={"INFERMILL_FAULT": "after_commit"},
                  deferrable=deferrable, poll_interval=0.2, summary_dir=str(tmp_path / "summaries"))
    assert ti.state == "failed" and ti.try_number == 1  # killed by a signal: a failure, never a success
    assert _summary(ti) is None  # it died before writing one


# Scores like SCORER until half-way, then holds its batch for good (and says so in a file).
HOLDING_SCORER = SCORER + '''

import os
import threading

_real = Scorer.predict


def _predict(self, batch):
    if batch["customer_id"].min() >= 4_000:
        open(os.environ["HELD_FILE"], "w").close()
        threading.Event().wait()
    return _real(self, batch)


Scorer.predict = _predict
'''


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_run_drains_when_the_task_process_is_killed(airflow_home: Path, tmp_path: Path) -> None:
    """A task process killed with -9 (a worker lost to the OOM killer) leaves no run going on unseen: the
    run gets SIGTERM, drains, and the ledger records it interrupted (its lease free for the retry)."""
    from infermill.engine.job_status import status

    write_parquet_files(tmp_path / "data", ROWS, 2)
    job = _job(tmp_path, scorer=HOLDING_SCORER)
    held = tmp_path / "held"
    dag_file = tmp_path / "dag.py"
    dag_file.write_text(textwrap.dedent(f"""
        from datetime import UTC, datetime

        from airflow import DAG

        from infermill.integrations.airflow import InfermillOperator

        with DAG("orphan", start_date=datetime(2026, 3, 1, tzinfo=UTC), schedule=None) as dag:
            InfermillOperator(task_id="score", job={str(job)!r}, env={{"HELD_FILE": {str(held)!r}}})
        dag.test(execution_date=datetime(2026, 3, 1, tzinfo=UTC))
        """))
    task = subprocess.Popen([sys.executable, str(dag_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(held.exists)  # half the input committed, a batch held in the model
        assert status(str(job))["state"] == "running"
    finally:
        task.kill()
        task.wait()
    try:
        _wait_for(lambda: status(str(job))["state"] != "running")  # the run drained: grace_seconds = 2
    finally:
        holder = status(str(job))["holder"]
        if holder:  # the run went on unseen: stop it, so the failed test leaves no process behind
            os.kill(holder["pid"], signal.SIGKILL)
    info = status(str(job))
    assert info["state"] == "interrupted" and info["holder"] is None
    assert 0 < info["shards_committed"] < info["shards_total"]  # kept: the next run resumes
