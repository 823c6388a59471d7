"""Concurrent runs of one job: one proceeds, the other exits 3; stale leases are taken over; a paused
holder whose lease was taken over cannot commit (fencing). Each runs against the SQLite ledger and a
PostgreSQL one; the ledger-level lease cases are in ``infermill.testing.LedgerConformance``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import infermill
from infermill.errors import JobLockedError
from infermill.ledger import Ledger, open_ledger
from tests.conftest import read_output
from tests.engine.test_crash import SLOW_SCORER
from tests.engine.test_signals import _status, _wait_for
from tests.postgres import ledger_line


def _popen(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermill", "run", str(job), "--quiet", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _ledger(job_dir: Path, url: str | None, **options: object) -> Ledger:
    """The job's ledger (the default file beside the job, or ``url``), opened as a test's stand-in run."""
    return open_ledger(url or str(job_dir / ".infermill" / "scores.sqlite"), job="scores", **options)  # type: ignore[arg-type]


@pytest.mark.slow
def test_two_runs_started_together_ten_times(parquet_job, job_dir: Path, ledger_url: str | None) -> None:
    job, table = parquet_job(rows=24_000, files=2, shard_rows=2_000, batch=250, extra=ledger_line(ledger_url))
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


def test_live_holder_on_another_host_blocks(parquet_job, job_dir: Path, ledger_url: str | None) -> None:
    job, _ = parquet_job(extra=ledger_line(ledger_url))
    other = _ledger(job_dir, ledger_url, whoami=("other-host", 4242))
    try:
        other.acquire_lease(lease_seconds=30, job="scores")
        with pytest.raises(JobLockedError, match="host other-host, pid 4242"):
            infermill.run(job, progress="off")
    finally:
        other.close()


def test_stale_lease_is_taken_over(parquet_job, job_dir: Path, ledger_url: str | None) -> None:
    job, _ = parquet_job(extra=f"lease_seconds = 1\n{ledger_line(ledger_url)}")
    if ledger_url is None:
        # SQLite takes its lease clock from the caller: this holder's last heartbeat was a minute ago.
        other = _ledger(job_dir, None, whoami=("other-host", 4242), clock=lambda: time.time() - 60)
    else:
        other = _ledger(job_dir, ledger_url, whoami=("other-host", 4242))
    try:
        lease = other.acquire_lease(lease_seconds=1, job="scores")
        if ledger_url is not None:  # PostgreSQL's lease clock is the server's: wait for it to age the lease
            _wait_for(lambda: other.lease_holder().heartbeat_age > 1.0)  # type: ignore[union-attr]
        result = infermill.run(job, progress="off")
        assert result.state == "complete"
        holder = other.lease_holder()
        assert holder is not None and holder.token == lease.token + 1  # the new run fences out the old holder
        assert holder.host != "other-host" and holder.released
    finally:
        other.close()


@pytest.mark.slow
def test_paused_holder_wakes_up_fenced(parquet_job, job_dir: Path, ledger_url: str | None) -> None:
    # Batches of 50 rows: 0.2 s a shard, so the run is still working when it is paused.
    job, _ = parquet_job(rows=20_000, files=2, shard_rows=1_000, batch=50,
                         extra=f"lease_seconds = 1.5\n{ledger_line(ledger_url)}")
    (job_dir / "scorer.py").write_text(SLOW_SCORER)
    first = _popen(job)
    _wait_for(lambda: _status(job)["shards_committed"] >= 1)
    os.kill(first.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM...
    ledger = _ledger(job_dir, ledger_url)
    try:
        # Until the paused run's lease is stale by the ledger's own clock.
        _wait_for(lambda: ledger.lease_holder().heartbeat_age > 1.5)  # type: ignore[union-attr]
        second = _popen(job)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
    finally:
        os.kill(first.pid, signal.SIGCONT)
        ledger.close()
    _, err = first.communicate(timeout=60)
    assert first.returncode == 3, err
    assert "lease was taken over" in err
    out = read_output(job_dir / "out")
    ids = out.column("customer_id").to_pylist()
    assert sorted(ids) == list(range(20_000))
