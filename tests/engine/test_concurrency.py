"""Concurrent runs of one job: one proceeds, the other exits 3; stale leases are taken over; a paused
holder whose lease was taken over cannot commit (fencing)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import infermill
from infermill.errors import JobLockedError, LeaseLostError
from infermill.ledger import Ledger
from tests.conftest import read_output
from tests.engine.test_crash import SLOW_SCORER
from tests.engine.test_signals import _status, _wait_for


def _popen(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermill", "run", str(job), "--quiet", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_two_runs_started_together_ten_times(parquet_job, job_dir: Path) -> None:
    job, table = parquet_job(rows=24_000, files=2, shard_rows=2_000, batch=250)
    (job_dir / "scorer.py").write_text(SLOW_SCORER)
    for round_ in range(10):
        args = ("--restart",) if round_ else ()
        a, b = _popen(job, *args), _popen(job, *args)
        (_, err_a), (_, err_b) = a.communicate(timeout=120), b.communicate(timeout=120)
        codes = sorted([a.returncode, b.returncode])
        assert codes == [0, 3], (round_, err_a, err_b)
        loser = err_a if a.returncode == 3 else err_b
        assert "another run of job 'scores' is active" in loser
        out = read_output(job_dir / "out")
        ids = out.column("customer_id").to_pylist()
        assert sorted(ids) == list(range(24_000))


def _fake_lease(ledger_path: Path, host: str, pid: int, age: float) -> None:
    db = sqlite3.connect(ledger_path)
    now = time.time()
    db.execute(
        "INSERT OR REPLACE INTO lease (id, token, run_id, host, pid, acquired_at, heartbeat_at, released)"
        " VALUES (1, 41, NULL, ?, ?, ?, ?, 0)",
        (host, pid, now - age - 5, now - age),
    )
    db.commit()
    db.close()


def test_live_holder_on_another_host_blocks(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job()
    ledger = job_dir / ".infermill" / "scores.sqlite"
    Ledger(str(ledger)).close()
    _fake_lease(ledger, "other-host", 4242, age=1)
    with pytest.raises(JobLockedError, match="host other-host, pid 4242"):
        infermill.run(job, progress="off")


def test_stale_lease_is_taken_over(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(extra="lease_seconds = 5")
    ledger = job_dir / ".infermill" / "scores.sqlite"
    Ledger(str(ledger)).close()
    _fake_lease(ledger, "other-host", 4242, age=60)
    result = infermill.run(job, progress="off")
    assert result.state == "complete"
    token = sqlite3.connect(ledger).execute("SELECT token FROM lease").fetchone()[0]
    assert token == 42  # the new run's token fences out the old holder's


def test_fenced_holder_cannot_commit(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    old, new = Ledger(path), Ledger(path)
    old.create_job(name="j", spec_fingerprint="s", model_fingerprint="m", input_fingerprint="i",
                   output_path="out", spec_json="{}", shards=[("s0", 0, "{}", 10), ("s1", 1, "{}", 10)])
    lease_old = old.acquire_lease(lease_seconds=0.2, job="j")
    run_old = old.start_run(lease_old)
    old.mark_running("s0", lease_old, run_old)
    time.sleep(0.3)  # the old holder stalls past its lease
    lease_new = new.acquire_lease(lease_seconds=0.2, job="j")
    assert lease_new.token == lease_old.token + 1
    with pytest.raises(LeaseLostError):
        old.commit_shard("s0", lease_old, output_file="part-00000.parquet", rows_out=10)
    assert not old.heartbeat(lease_old)
    new.start_run(lease_new)
    assert [r.state for r in new.shards()] == ["pending", "pending"]


@pytest.mark.slow
def test_paused_holder_wakes_up_fenced(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=20_000, files=2, shard_rows=1_000, batch=250, extra="lease_seconds = 1.5")
    (job_dir / "scorer.py").write_text(SLOW_SCORER)
    first = _popen(job)
    _wait_for(lambda: _status(job)["shards_committed"] >= 1)
    os.kill(first.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM...
    try:
        time.sleep(2.0)
        second = _popen(job)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 3, err
    assert "lease was taken over" in err
    out = read_output(job_dir / "out")
    ids = out.column("customer_id").to_pylist()
    assert sorted(ids) == list(range(20_000))
