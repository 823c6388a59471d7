"""The Prefect integration, run through Prefect's own local engine and test harness (a temporary API and
database in a subprocess, offline): a tiny real job as a child ``infermill run`` per attempt.

Runs in its own environment (``make test-prefect``: Prefect's dependencies conflict with ours); skipped
where Prefect is not installed."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SCORER, expected_score, read_output, write_job, write_parquet_files


def _offline() -> None:
    """Before Prefect is imported (it reads its settings and creates its home then): a throwaway home, no
    API server to reach but the harness's, no telemetry or analytics."""
    home = tempfile.mkdtemp(prefix="infermill-prefect-home-")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_API_KEY", None)
    os.environ.update(
        PREFECT_HOME=home,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS="false",
    )


if importlib.util.find_spec("prefect") is not None:
    _offline()
pytest.importorskip("prefect", reason="Prefect runs in its own environment: make test-prefect")

from prefect import flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from infermill.engine.lease import connect  # noqa: E402
from infermill.integrations.prefect import (  # noqa: E402
    InfermillRunFailed,
    _logical_date,
    infermill_flow,
    infermill_task,
    retry_condition,
)
from infermill.spec import load_spec  # noqa: E402

ROWS = 2_000

# Stops its own first run, once (a marker file beside the model remembers). At the first batch of the
# second shard it waits until the first shard's part file is renamed out of _staging/ (the coordinator is
# committing it, which a signal does not stop), sends SIGTERM to its own process and never returns: no
# other shard can be committed, whatever the threads' timing. The run gives up on the stuck call after
# grace_seconds (0) and ABANDON_AFTER_S (5 s), requeues its shard and exits 75 with one shard committed.
INTERRUPTING_SCORER = SCORER + """
import os
import signal
import threading
import time
from pathlib import Path


class Interrupting(Scorer):
    calls = 0

    def predict(self, batch):
        Interrupting.calls += 1
        here = Path(__file__).parent
        marker = here / "interrupted-once"
        if Interrupting.calls == 3 and not marker.exists():
            deadline = time.monotonic() + 60
            while not list((here / "out").glob("part-*")) and time.monotonic() < deadline:
                time.sleep(0.02)
            marker.touch()
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait()
        return super().predict(batch)


class Stuck(Scorer):
    def predict(self, batch):
        threading.Event().wait()  # a model call that never returns
"""


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)


def _job(folder: Path, entrypoint: str = "scorer.py:Scorer", model_kind: str = "python") -> tuple[Path, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scorer.py").write_text(INTERRUPTING_SCORER)
    table = write_parquet_files(folder / "data", ROWS, files=4)
    job = write_job(
        folder / "job.toml",
        f"""
        name = "prefect-scores"
        [input]
        path = "data/*.parquet"
        id_column = "customer_id"
        shard_rows = 500
        [model]
        kind = "{model_kind}"
        entrypoint = "{entrypoint}"
        features = ["f0", "f1", "f2"]
        outputs = ["score"]
        [batch]
        size = 250
        [output]
        path = "out"
        [runtime]
        workers = 1
        """,
    )
    return job, table


def _assert_exact(folder: Path, table: Any) -> None:
    out = read_output(folder / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(ROWS))  # every row once
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(table))


def _attempts(state: Any) -> list[int]:
    """The run_count of each task run of the flow run that ended in ``state``."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return [r.run_count for r in runs]


def _artifacts(key: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)


def test_success_returns_the_summary_and_publishes_it(tmp_path: Path) -> None:
    job, table = _job(tmp_path)
    state = infermill_flow(job=str(job), return_state=True)

    assert state.is_completed(), state
    summary = state.result()
    assert summary["state"] == "complete" and summary["exit_code"] == 0 and summary["success"] is True
    assert summary["rows_succeeded"] == ROWS == summary["rows_this_run"]
    assert summary["manifest"] and Path(summary["manifest"]).exists()
    assert _attempts(state) == [1]
    _assert_exact(tmp_path, table)
    artifact = _artifacts("infermill-prefect-scores")[-1]
    table_rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    rows = {row["key"]: row["value"] for row in table_rows}
    assert rows["state"] == "complete" and rows["rows_succeeded"] == str(ROWS)
    assert "**complete** (exit 0)" in artifact.description


def test_exit_75_is_retried_and_the_retry_resumes(tmp_path: Path) -> None:
    job, table = _job(tmp_path, entrypoint="scorer.py:Interrupting")
    job.write_text(job.read_text() + "grace_seconds = 0\n")
    state = infermill_flow(job=str(job), retries=2, retry_delay_seconds=0, return_state=True)

    assert state.is_completed(), state
    assert (tmp_path / "interrupted-once").exists()  # the first attempt was stopped
    assert _attempts(state) == [2]  # one retry, not more
    summary = state.result()
    assert summary["state"] == "complete" and summary["rows_succeeded"] == ROWS
    assert summary["rows_this_run"] == ROWS - 500  # resumed: the first attempt's shard was kept
    _assert_exact(tmp_path, table)
    first, last = _artifacts("infermill-prefect-scores")[-2:]
    assert "**interrupted** (exit 75)" in first.description
    assert "**complete** (exit 0)" in last.description


def test_invalid_job_fails_without_retry(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, model_kind="no-such-kind")
    state = infermill_flow(job=str(job), retries=3, retry_delay_seconds=0, return_state=True)

    assert state.is_failed(), state
    assert _attempts(state) == [1]  # exit 2: not retried
    with pytest.raises(InfermillRunFailed) as caught:
        state.result()
    error = caught.value
    assert error.returncode == 2 and error.state == "invalid" and error.retry is False
    assert error.summary is not None and error.summary["state"] == "invalid"
    assert "no-such-kind" in error.summary["message"]
    assert not (tmp_path / "out").exists()


def test_a_killed_run_is_a_failure_never_a_success(tmp_path: Path) -> None:
    job, _ = _job(tmp_path)
    state = infermill_flow(
        job=str(job), env={"INFERMILL_FAULT": "after_commit:2"}, retries=3, retry_delay_seconds=0, return_state=True
    )

    assert state.is_failed(), state
    assert _attempts(state) == [1]  # a signal is not in the retry contract
    with pytest.raises(InfermillRunFailed) as caught:
        state.result()
    assert caught.value.returncode == -9 and caught.value.state == "killed" and caught.value.summary is None
    assert "SIGKILL" in caught.value.message


def test_a_task_stopped_by_its_timeout_stops_its_run(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, entrypoint="scorer.py:Stuck")
    job.write_text(job.read_text() + "grace_seconds = 0\n")
    run = infermill_task.with_options(timeout_seconds=3, retries=0)

    @flow
    def stopped() -> Any:
        return run(str(job))

    state = stopped(return_state=True)

    assert state.is_failed(), state
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert task_run.state.name == "TimedOut", task_run.state
    ledger = connect(load_spec(str(job)))
    try:
        last = ledger.runs()[-1]
    finally:
        ledger.close()
    # The child got SIGTERM, gave up on the stuck call, ended its run in the ledger and exited before the
    # task returned: no run goes on behind a task that Prefect considers over.
    assert last.ended_at is not None and last.state != "running", last
    with pytest.raises(ProcessLookupError):
        os.kill(last.pid, 0)


def test_the_logical_date_fills_the_date_placeholder(tmp_path: Path) -> None:
    job, _ = _job(tmp_path)
    write_parquet_files(tmp_path / "data" / "2026-01-02", 300, files=1)
    job.write_text(job.read_text().replace('path = "data/*.parquet"', 'path = "data/{date}/*.parquet"'))
    summary = infermill_flow(job=str(job), logical_date="2026-01-02", retries=0)

    assert summary["params"] == {"date": "2026-01-02"} and summary["rows_succeeded"] == 300


def test_a_scheduled_time_is_a_date_in_the_jobs_timezone(tmp_path: Path) -> None:
    job, _ = _job(tmp_path)
    late = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)
    assert _logical_date(str(job), late) is None  # no {date} in the path: nothing to pass (it would be refused)
    job.write_text(job.read_text().replace('path = "data/*.parquet"', 'path = "data/{date}/*.parquet"')
                   + 'timezone = "Europe/Paris"\n')
    assert _logical_date(str(job), late) == "2026-03-02"  # 00:30 in Paris
    assert _logical_date(str(job), "2026-01-05") == "2026-01-05"


def test_the_documented_flow_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
    section = docs.split("\n## prefect\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(# flows/nightly.py\n.*?)```", section, re.S)
    assert found, "docs/integrations.md: no flows/nightly.py example in ## prefect"
    job, table = _job(tmp_path / "jobs")
    job.rename(tmp_path / "jobs" / "nightly.toml")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "nightly.py").write_text(found.group(1))
    monkeypatch.chdir(tmp_path)

    runpy.run_path("flows/nightly.py", run_name="__main__")

    _assert_exact(tmp_path / "jobs", table)


def test_import_infermill_does_not_import_prefect() -> None:
    code = "import sys, infermill, infermill.integrations; print(sorted(m for m in sys.modules if 'prefect' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_retry_condition_follows_the_exit_code_contract() -> None:
    from prefect.states import Failed

    def retried(error: BaseException) -> bool:
        return retry_condition(None, None, Failed(data=error))

    assert [retried(InfermillRunFailed("x", returncode=code)) for code in (75, 3, 1, 2, -9)] == [
        True, True, False, False, False,
    ]
    assert not retried(ValueError("not an infermill run"))
