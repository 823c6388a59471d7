"""Signals and concurrent runs through the real CLI: exit 75 on SIGTERM, exit 3 when the job is locked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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


class _Lines:
    """A pipe read on a thread, so a test can wait for a line and still get all the output at the end."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        with pipe:
            for line in pipe:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        with self._cond:
            seen = self._cond.wait_for(lambda: self.closed or any(text in line for line in self.lines), timeout)
            assert seen and any(text in line for line in self.lines), f"no {text!r} in: {''.join(self.lines)}"

    def text(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


HOLDING_SCORER = """
import os
import time


class Scorer:
    def predict(self, batch):
        hold = os.environ["HOLD_FILE"]
        if os.path.exists(hold) and batch["customer_id"].max() >= 20_000:
            # Held: from the second half of the input on, the batch in the model outlasts the grace period,
            # until the test removes the file.
            open(hold + ".held", "w").close()
            while os.path.exists(hold):
                time.sleep(0.05)
        return {"score": batch["f0"] * 0.5 + batch["f1"] - batch["f2"] * 0.25}
"""


def _start(args: list[str], **env: str) -> tuple[subprocess.Popen[str], _Lines]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    return proc, _Lines(proc.stderr)


def _held_job(parquet_job, job_dir: Path, grace: float = 20) -> tuple[Path, Path]:
    """A job whose model holds its first batch of the input's second half while the returned file exists
    (it does, to begin with): a run of it stays in progress until the test says otherwise."""
    job, _ = parquet_job(rows=40_000, files=4, shard_rows=2_000, batch=500, extra=f"grace_seconds = {grace}")
    (job_dir / "scorer.py").write_text(HOLDING_SCORER)
    job.write_text(job.read_text().replace('["f0", "f1", "f2"]', '["customer_id", "f0", "f1", "f2"]'))
    hold = job_dir / "hold"
    hold.touch()
    return job, hold


def _held(hold: Path) -> bool:
    return hold.with_name(hold.name + ".held").exists()


def test_sigterm_exits_75_and_rerun_completes(parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, hold = _held_job(parquet_job, job_dir)
    monkeypatch.setenv("HOLD_FILE", str(hold))
    proc = _popen(job)
    _wait_for(lambda: _held(hold))  # half the input committed, a batch in the model: whatever the machine's speed
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    hold.unlink()  # the batch in flight finishes within the grace period and its shard commits
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


def test_grace_expiry_abandons_in_flight_work(parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, hold = _held_job(parquet_job, job_dir, grace=0.2)
    monkeypatch.setenv("HOLD_FILE", str(hold))
    proc = _popen(job)
    _wait_for(lambda: _held(hold))  # the held batch outlasts the 0.2 s grace period: it is abandoned
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert 0 < _status(job)["shards_committed"] < 20
    hold.unlink()
    rerun = _popen(job)
    assert rerun.communicate(timeout=120) and rerun.returncode == 0
    assert read_output(job_dir / "out").num_rows == 40_000


def test_second_run_of_same_job_exits_3(parquet_job, job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, hold = _held_job(parquet_job, job_dir)
    monkeypatch.setenv("HOLD_FILE", str(hold))
    first = _popen(job)
    _wait_for(lambda: _held(hold))  # still running, whatever the machine's speed
    second = _popen(job)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 3
    assert f"another run of job 'scores' is active: host {os.uname().nodename}, pid {first.pid}, since" in err
    assert _status(job)["holder"]["pid"] == first.pid
    hold.unlink()
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
    job, hold = _held_job(parquet_job, job_dir, grace=60)
    proc, err = _start([sys.executable, "-m", "infermill", "run", str(job)], HOLD_FILE=str(hold))
    _wait_for(lambda: _held(hold))  # half the input is done; a batch is held in the model
    proc.send_signal(signal.SIGTERM)
    err.wait_for("SIGTERM: stopping; in-flight shards get up to 60 s to finish")  # the first one was handled
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75, err.text()
    assert time.monotonic() - sent < 5  # not the 60 s grace period
    assert "SIGTERM again: exiting at once (75); rerun to resume" in err.text()
    assert 0 < _status(job)["shards_committed"] < 20
    hold.unlink()
    rerun, rerun_err = _start([sys.executable, "-m", "infermill", "run", str(job), "--quiet"], HOLD_FILE=str(hold))
    assert rerun.wait(timeout=120) == 0, rerun_err.text()
    out = read_output(job_dir / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(40_000))


DRIVER = """
import signal
import sys

from infermill.cli import main

code = main(sys.argv[1:])
print(f"main returned {code}", file=sys.stderr, flush=True)
signal.pause()  # a slow teardown: the process lives on after the run returned
sys.exit(code)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_after_the_interrupted_run_returned_still_exits_75(
    parquet_job, job_dir: Path, signum: signal.Signals
) -> None:
    job, hold = _held_job(parquet_job, job_dir)
    (job_dir / "driver.py").write_text(DRIVER)
    proc, err = _start([sys.executable, str(job_dir / "driver.py"), "run", str(job)], HOLD_FILE=str(hold))
    _wait_for(lambda: _held(hold))
    proc.send_signal(signum)
    err.wait_for(f"{signum.name}: stopping")
    hold.unlink()  # the held batch ends, its shard is committed and the run returns
    err.wait_for("main returned 75")  # the run is over, and its signal handling with it
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 75, err.text()
    assert f"{signum.name} again: exiting at once (75)" in err.text()
