"""`infermill serve` as real processes, on a fake clock (``INFERMILL_CLOCK_FILE``): kill -9 of serve mid-run
then a restart (no duplicate run, output exact), SIGTERM drains the running job, two serve processes on
one job never run it twice at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermill.ledger import open_ledger
from tests.conftest import read_output
from tests.schedule.helpers import DAY, T0, scheduled_job, shards_committed, triggers, wait_for

pytestmark = pytest.mark.slow  # serve processes and their runs: about a minute and a half


class Serve:
    """One `infermill serve` process; its log (and its runs' output) goes to a file."""

    def __init__(self, job: Path, clock_file: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "INFERMILL_CLOCK_FILE": str(clock_file)}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infermill", "serve", str(job), "--poll", "0.05"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()


def _set_clock(clock_file: Path, now: float) -> None:
    temp = clock_file.with_suffix(".tmp")
    temp.write_text(f"{now}\n")
    os.replace(temp, clock_file)  # serve never reads half a time


def _lease_pid(job: Path) -> int:
    ledger = open_ledger(str(job.parent / ".infermill" / "scores.sqlite"), job="scores")
    try:
        holder = ledger.lease_holder()
        assert holder is not None
        return holder.pid
    finally:
        ledger.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


def _ids(folder: Path) -> list[int]:
    return sorted(read_output(folder / "out").column("customer_id").to_pylist())


def test_kill_9_of_serve_mid_run_then_restart_no_duplicate_run_output_exact(
    tmp_path: Path, serves: list[Serve]
) -> None:
    job, table = scheduled_job(tmp_path, 'cron = "0 2 * * *"\n')
    clock = tmp_path / "clock"
    _set_clock(clock, T0)
    (tmp_path / "hold").touch()  # the run commits its first shard, then waits
    serves.append(first := Serve(job, clock, tmp_path / "serve1.log"))
    wait_for(lambda: "serving 1 job" in first.text(), "serve to start")
    _set_clock(clock, T0 + 2 * 3600)
    wait_for(lambda: shards_committed(job) == 1, "the first shard's commit", log=first.log)
    child = _lease_pid(job)
    first.proc.kill()  # kill -9 of serve, mid-run
    first.proc.wait()
    wait_for(lambda: _gone(child), "the run to end once its serve is gone")  # it was told to drain
    (tmp_path / "hold").unlink()
    (trigger,) = triggers(job)
    assert trigger.state == "running"  # serve died before it could record more
    serves.append(second := Serve(job, clock, tmp_path / "serve2.log"))
    wait_for(lambda: triggers(job)[0].state == "complete", "the restarted serve to resume the run")
    assert second.stop() == 0
    (trigger,) = triggers(job)  # one trigger: the due time was not claimed again
    assert (trigger.attempts, trigger.exit_code, trigger.run_ids) == (2, 0, (2,))
    ledger = open_ledger(str(job.parent / ".infermill" / "scores.sqlite"), job="scores")
    try:  # the killed attempt's run was interrupted; the second resumed it
        assert [(r.run_id, r.state) for r in ledger.runs()] == [(1, "interrupted"), (2, "complete")]
        assert ledger.runs()[1].rows_done == 2_000
    finally:
        ledger.close()
    assert "taking over cron:2026-03-01T02:00:00+00:00" in second.text()
    assert _ids(tmp_path) == table.column("customer_id").to_pylist()  # every id once


def test_sigterm_drains_the_running_job_and_stops_serve(tmp_path: Path, serves: list[Serve]) -> None:
    job, _ = scheduled_job(tmp_path, 'cron = "0 2 * * *"\n')
    clock = tmp_path / "clock"
    _set_clock(clock, T0)
    (tmp_path / "hold").touch()
    serves.append(serve := Serve(job, clock, tmp_path / "serve.log"))
    wait_for(lambda: "serving 1 job" in serve.text(), "serve to start")
    _set_clock(clock, T0 + 2 * 3600)
    wait_for(lambda: shards_committed(job) == 1, "the first shard's commit")
    serve.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: stopping; in-flight shards" in serve.text(), "the run to be told to drain")
    (tmp_path / "hold").unlink()  # the shard in flight finishes within the grace period
    assert serve.proc.wait(timeout=90) == 0
    (trigger,) = triggers(job)
    assert (trigger.state, trigger.exit_code) == ("interrupted", 75)
    assert shards_committed(job) >= 2  # drained: the shard in flight was committed, not abandoned
    summary = json.loads(trigger.summary or "{}")
    assert (summary["state"], summary["retry"], summary["success"]) == ("interrupted", True, False)
    assert "[serve] stopped" in serve.text()


def test_two_serve_processes_on_one_job_never_run_it_twice_at_once(tmp_path: Path, serves: list[Serve]) -> None:
    job, table = scheduled_job(tmp_path, 'cron = "0 2 * * *"\nretry_seconds = 60\n')
    clock = tmp_path / "clock"
    _set_clock(clock, T0)
    (tmp_path / "hold").touch()
    serves.append(a := Serve(job, clock, tmp_path / "a.log"))
    serves.append(b := Serve(job, clock, tmp_path / "b.log"))
    wait_for(lambda: "serving 1 job" in a.text() and "serving 1 job" in b.text(), "both serves to start")
    _set_clock(clock, T0 + 2 * 3600)
    wait_for(lambda: shards_committed(job) == 1, "one run of the first due time")
    _set_clock(clock, T0 + 2 * 3600 + DAY)  # the next due time, while that run still holds the job
    wait_for(lambda: len(triggers(job)) == 2 and triggers(job)[1].state == "locked",
             "the other serve's run of the second due time to find the job locked (exit 3)")
    (tmp_path / "hold").unlink()
    wait_for(lambda: triggers(job)[0].state == "complete", "the first run to complete")
    _set_clock(clock, T0 + 2 * 3600 + DAY + 61)  # past retry_seconds: the locked trigger runs again
    wait_for(lambda: triggers(job)[1].state == "complete", "the second due time's run")
    assert a.stop() == 0 and b.stop() == 0
    first, second = triggers(job)
    assert (first.attempts, second.attempts) == (1, 2)
    ledger = open_ledger(str(job.parent / ".infermill" / "scores.sqlite"), job="scores")
    try:
        spans = sorted((r.started_at, r.ended_at or 0.0) for r in ledger.runs())
    finally:
        ledger.close()
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))  # never overlapping
    assert _ids(tmp_path) == table.column("customer_id").to_pylist()
