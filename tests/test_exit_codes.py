"""The exit-code contract (0 complete, 1 failed, 2 invalid, 3 locked, 75 interrupted or transient) and
`infermill run --summary-json`, written atomically whatever the outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermill.errors import TransientError, outcome_of
from infermill.ledger import open_ledger
from tests.conftest import run_cli, write_job

BROKEN = '''
class Scorer:
    def predict(self, batch):
        raise ValueError("cannot score this row")
'''

UNREACHABLE = '''
from infermill import TransientError


class Scorer:
    def setup(self):
        raise TransientError("the weights server did not answer (timeout)")

    def predict(self, batch):
        return {"score": batch["f0"]}
'''


def _summary(path: Path) -> dict:  # type: ignore[type-arg]
    assert not list(path.parent.glob(".summary-*")), "the temporary file was renamed into place"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("code", "state", "success", "retry"), [
    (0, "complete", True, False), (1, "failed", False, False), (2, "invalid", False, False),
    (3, "locked", False, True), (75, "interrupted", False, True), (-9, "killed", False, False),
    (-15, "killed", False, False), (42, "failed", False, False),
])
def test_outcome_of_each_exit_code(code: int, state: str, success: bool, retry: bool) -> None:
    outcome = outcome_of(code)
    assert (outcome.state, outcome.success, outcome.retry) == (state, success, retry)


def test_a_complete_run_writes_its_summary(parquet_job, job_dir: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=2_000, files=2, shard_rows=1_000)
    path = job_dir / "reports" / "summary.json"
    proc = run_cli("run", str(job), "--summary-json", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    data = _summary(path)
    assert (data["state"], data["exit_code"], data["success"], data["retry"]) == ("complete", 0, True, False)
    assert (data["rows_succeeded"], data["rows_failed"], data["rows_this_run"], data["shards_committed"]) == (
        2_000, 0, 2_000, 2)
    assert data["manifest"].endswith("_manifest.json") and data["output"] == str(job_dir / "out")
    assert data["run_id"] == 1 and data["seconds"] > 0 and data["cost"] is None and data["error"] is None
    again = run_cli("run", str(job), "--summary-json", str(path), "-q")  # nothing to do: replaced atomically
    assert again.returncode == 0
    assert _summary(path)["message"].startswith("nothing to do") and _summary(path)["run_id"] is None


def test_a_failed_run_writes_its_summary_with_dead_letters_by_class(  # type: ignore[no-untyped-def]
    job_dir: Path, parquet_job
) -> None:
    job, _ = parquet_job(
        rows=1_000, files=1, shard_rows=1_000, extra="[errors]\nstop_after_identical_batch_failures = 0"
    )
    (job_dir / "scorer.py").write_text(BROKEN)
    path = job_dir / "summary.json"
    proc = run_cli("run", str(job), "--summary-json", str(path), "-q")
    assert proc.returncode == 1
    data = _summary(path)
    assert (data["state"], data["exit_code"], data["retry"]) == ("failed", 1, False)
    assert data["dead_letters"] == {"ValueError": 1_000}
    assert data["error"]["class"] == "JobFailedError" and "no row was scored" in data["message"]
    assert (data["rows_failed"], data["shards_committed"], data["manifest"]) == (1_000, 1, None)


def test_an_invalid_job_writes_its_summary_and_exits_2(job_dir: Path) -> None:
    job = write_job(job_dir / "bad.toml", """
        [input]
        path = "data/*.parquet"
        bogus = 1
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        [output]
        path = "out"
        [schedule]
        cron = "0 25 * * *"
        """)
    path = job_dir / "summary.json"
    proc = run_cli("run", str(job), "--summary-json", str(path))
    assert proc.returncode == 2
    data = _summary(path)
    assert (data["state"], data["exit_code"], data["success"], data["retry"]) == ("invalid", 2, False, False)
    assert data["error"]["class"] == "SpecError" and data["job"] is None


def test_a_locked_job_writes_its_summary_and_exits_3(parquet_job, job_dir: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=1_000, files=1)
    ledger = open_ledger(str(job_dir / ".infermill" / "scores.sqlite"), job="scores")
    try:
        ledger.acquire_lease(lease_seconds=30, job="scores")  # another run holds the job
        path = job_dir / "summary.json"
        proc = run_cli("run", str(job), "--summary-json", str(path))
    finally:
        ledger.close()
    assert proc.returncode == 3
    data = _summary(path)
    assert (data["state"], data["exit_code"], data["retry"], data["error"]["class"]) == (
        "locked", 3, True, "JobLockedError")


def test_a_transient_error_that_stops_the_run_exits_75_safe_to_retry(parquet_job, job_dir: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=1_000, files=1)
    (job_dir / "scorer.py").write_text(UNREACHABLE)
    path = job_dir / "summary.json"
    proc = run_cli("run", str(job), "--summary-json", str(path))
    assert proc.returncode == 75, proc.stderr
    assert "weights server did not answer" in proc.stderr
    data = _summary(path)
    assert (data["state"], data["retry"], data["error"]["class"]) == ("interrupted", True, "TransientError")
    assert TransientError("x").exit_code == 75
