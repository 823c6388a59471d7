"""Signals and concurrent runs through the real CLI: exit 75 on SIGTERM, exit 3 when the job is locked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_output
from tests.engine.test_crash import SLOW_SCORER

pytestmark = pytest.mark.slow


def _slow_job(parquet_job, job_dir: Path, grace: float = 20) -> Path:
    job, _ = parquet_job(rows=40_000, files=4, shard_rows=2_000, batch=500, extra=f"grace_seconds = {grace}")
    (job_dir / "scorer.py").write_text(SLOW_SCORER)
    return job


def _popen(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermill", "run", str(job), "--quiet", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def _status(job: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "infermill", "status", str(job), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_sigterm_exits_75_and_rerun_completes(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir)
    proc = _popen(job)
    _wait_for(lambda: _status(job)["shards_committed"] >= 2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert time.monotonic() - sent < 20
    assert "interrupted" in err and "rerun the same command to resume" in err
    info = _status(job)
    assert info["state"] == "interrupted"
    assert 0 < info["shards_committed"] < info["shards_total"]
    rerun = _popen(job)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    out = read_output(job_dir / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(40_000))


def test_grace_expiry_abandons_in_flight_work(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir, grace=0.2)
    proc = _popen(job)
    _wait_for(lambda: _status(job)["shards_committed"] >= 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    rerun = _popen(job)
    assert rerun.communicate(timeout=120) and rerun.returncode == 0
    assert read_output(job_dir / "out").num_rows == 40_000


def test_second_run_of_same_job_exits_3(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir)
    first = _popen(job)
    _wait_for(lambda: _status(job)["state"] == "running")
    second = _popen(job)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 3
    assert f"another run of job 'scores' is active: host {os.uname().nodename}, pid {first.pid}, since" in err
    assert _status(job)["holder"]["pid"] == first.pid
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err


def test_wait_flag_waits_for_the_holder(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir)
    first = _popen(job)
    _wait_for(lambda: _status(job)["state"] == "running")
    second = _popen(job, "--wait")
    _, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "nothing to do" in out2


def test_killed_holder_does_not_block_a_rerun(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir)
    first = _popen(job)
    _wait_for(lambda: _status(job)["state"] == "running")
    first.kill()
    first.communicate()
    assert _status(job)["state"] == "interrupted"
    rerun = _popen(job)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err


def test_second_signal_exits_at_once_and_rerun_resumes(parquet_job, job_dir: Path) -> None:
    job = _slow_job(parquet_job, job_dir, grace=60)
    proc = _popen(job)
    _wait_for(lambda: _status(job)["shards_committed"] >= 1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 75
    assert time.monotonic() - sent < 5  # not the 60 s grace period
    rerun = _popen(job)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    out = read_output(job_dir / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(40_000))
