"""The scheduler with a fake clock (no waiting for a due time) and real runs (each an `infermill run`
child process): cron due times fire once each, across a restart; catchup; file arrival; a run killed by
a signal is recorded as a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermill.schedule.history import runs
from infermill.schedule.launch import Launcher
from infermill.schedule.serve import Scheduler
from infermill.testing import FakeClock
from tests.conftest import read_output
from tests.schedule.helpers import DAY, T0, scheduled_job, triggers


def _scheduler(job: Path, clock: FakeClock, launcher: Launcher | None = None) -> Scheduler:
    return Scheduler([str(job)], clock=clock, launcher=launcher, log=lambda _text: None)


def test_a_cron_job_fires_once_per_due_time_across_a_restart(tmp_path: Path) -> None:
    job, table = scheduled_job(tmp_path, 'cron = "0 2 * * *"\n')
    clock = FakeClock(T0)
    first = _scheduler(job, clock)
    assert first.tick() == 0  # 00:30: nothing due yet
    clock.advance(2 * 3600)  # 02:30
    assert first.tick() == 1
    assert first.tick() == 0
    restarted = _scheduler(job, clock)  # serve restarted: the due time it handled stays handled
    assert restarted.tick() == 0
    clock.advance(DAY)
    assert restarted.tick() == 1
    assert restarted.tick() == 0
    fired = triggers(job)
    assert [(t.key, t.logical_date, t.state, t.attempts, t.exit_code) for t in fired] == [
        ("cron:2026-03-01T02:00:00+00:00", "2026-03-01", "complete", 1, 0),
        ("cron:2026-03-02T02:00:00+00:00", "2026-03-02", "complete", 1, 0),
    ]
    assert sorted(read_output(tmp_path / "out").column("customer_id").to_pylist()) == table.column(
        "customer_id").to_pylist()
    listed = runs(job)
    assert [(e.trigger, e.state) for e in listed] == [
        ("cron:2026-03-01T02:00:00+00:00", "complete"), ("cron:2026-03-02T02:00:00+00:00", "complete")]
    assert listed[0].run_id == 1 and listed[0].rows_done == 3_000  # the first did the work
    assert listed[1].run_id is None and listed[1].message.startswith("nothing to do")  # type: ignore[union-attr]


@pytest.mark.parametrize(("catchup", "fired"), [
    ("none", []),
    ("latest", ["2026-03-04"]),
    ("all", ["2026-03-02", "2026-03-03", "2026-03-04"]),
])
def test_catchup_of_due_times_missed_while_serve_was_down(tmp_path: Path, catchup: str, fired: list[str]) -> None:
    job, _ = scheduled_job(tmp_path, f'cron = "0 2 * * *"\ncatchup = "{catchup}"\n')
    clock = FakeClock(T0)
    first = _scheduler(job, clock)
    assert first.tick() == 0
    clock.advance(2 * 3600)  # serve runs the 1st's due time while up, whatever catchup says...
    assert first.tick() == 1
    clock.advance(3 * DAY)  # ... then is down over the 2nd, 3rd and 4th
    restarted = _scheduler(job, clock)
    assert restarted.tick() == len(fired)
    assert restarted.tick() == 0
    dates = [t.logical_date for t in triggers(job, "cron")]
    assert dates == ["2026-03-01", *fired]
    skipped = triggers(job, "skipped")
    if catchup != "all":
        assert json.loads(skipped[-1].detail)["skipped"] == 3 - len(fired)
    clock.advance(DAY)  # due times that come while serve is up always run
    assert restarted.tick() == 1
    assert triggers(job, "cron")[-1].logical_date == "2026-03-05"


def test_files_dropped_during_a_run_trigger_exactly_one_later_run(tmp_path: Path) -> None:
    job, _ = scheduled_job(tmp_path, "on_new_files = true\nsettle_seconds = 5\npoll_seconds = 0\n")
    (tmp_path / "drop").touch()  # the run drops data/late.parquet while it runs
    clock = FakeClock(T0)
    scheduler = _scheduler(job, clock)
    assert scheduler.tick() == 0  # the files are new, not settled yet
    clock.advance(5)
    assert scheduler.tick() == 1
    assert (tmp_path / "dropped").exists() and (tmp_path / "data" / "late.parquet").exists()
    assert scheduler.tick() == 0  # late.parquet: seen, settling
    clock.advance(5)
    assert scheduler.tick() == 1
    assert scheduler.tick() == 0
    clock.advance(60)
    assert scheduler.tick() == 0
    assert _scheduler(job, clock).tick() == 0  # a restarted serve sees nothing new either
    first, second = triggers(job, "files")
    assert json.loads(first.detail)["new"] == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert json.loads(second.detail)["new"] == ["late.parquet"]
    assert first.key != second.key and first.key.startswith("files:")
    assert (first.state, first.attempts, second.attempts) == ("complete", 1, 1)
    # The second run is incremental: it scores the new file only, and the output is the whole input's.
    assert (second.state, second.exit_code) == ("complete", 0)
    import pyarrow.parquet as pq

    expected = sorted(
        id_ for f in sorted((tmp_path / "data").glob("*.parquet"))
        for id_ in pq.read_table(f, columns=["customer_id"]).column("customer_id").to_pylist()
    )
    assert sorted(read_output(tmp_path / "out").column("customer_id").to_pylist()) == expected
    listed = runs(job)
    assert [e.state for e in listed if e.run_id is not None] == ["complete", "complete"]


def test_a_file_landing_in_a_local_input_folder_is_seen_through_its_event_not_at_the_next_poll(
    tmp_path: Path,
) -> None:
    """With a listing only every hour, the new file is still seen at once: the folder's inotify event says
    when to look (the listing still says what is new), and ``wait`` wakes on it."""
    import threading
    import time

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    job, _ = scheduled_job(tmp_path, "on_new_files = true\nsettle_seconds = 5\npoll_seconds = 3600\n")
    clock = FakeClock(T0)
    scheduler = _scheduler(job, clock)
    assert scheduler.tick() == 0  # the first listing: three new files, settling
    assert scheduler.watches[0].events is not None  # a local folder: watched
    clock.advance(5)
    assert scheduler.tick() == 1
    late = pq.read_table(tmp_path / "data" / "part-000.parquet").slice(0, 7)
    late = late.set_column(0, "customer_id", pc.add(late.column("customer_id"), 500_000))
    writer = threading.Timer(0.3, lambda: pq.write_table(late, tmp_path / "data" / "late.parquet"))
    writer.start()
    started = time.monotonic()
    scheduler.wait(60)  # woken by the file's events, not by the minute passing
    writer.join()
    assert time.monotonic() - started < 30
    clock.advance(1)  # an hour before the next listing by the clock
    assert scheduler.tick() == 0  # seen through its event: settling
    clock.advance(5)
    assert scheduler.tick() == 1
    first, second = triggers(job, "files")
    assert json.loads(second.detail)["new"] == ["late.parquet"] and second.state == "complete"
    ids = read_output(tmp_path / "out").column("customer_id").to_pylist()
    assert set(late.column("customer_id").to_pylist()) <= set(ids) and len(ids) == len(set(ids))


def test_a_run_killed_by_a_signal_is_recorded_as_a_failure_never_a_success(tmp_path: Path) -> None:
    job, _ = scheduled_job(tmp_path, 'cron = "0 2 * * *"\n')
    clock = FakeClock(T0)
    # The run SIGKILLs itself after its first shard's commit (as the OOM killer would).
    scheduler = _scheduler(job, clock, Launcher(env={"INFERMILL_FAULT": "after_commit"}))
    assert scheduler.tick() == 0
    clock.advance(2 * 3600)
    assert scheduler.tick() == 1
    (trigger,) = triggers(job)
    assert (trigger.state, trigger.exit_code, trigger.message) == ("killed", -9, "killed by signal 9")
    healthy = _scheduler(job, clock)  # serve restarted without the fault
    assert healthy.tick() == 0  # a failure: not run again for this due time
    assert [(e.run_id, e.state, e.exit_code, e.trigger) for e in runs(job)] == [
        (1, "killed", -9, "cron:2026-03-01T02:00:00+00:00")]
    clock.advance(DAY)  # the next due time runs as usual, and resumes the job
    assert healthy.tick() == 1
    assert [(t.state, t.exit_code) for t in triggers(job)] == [("killed", -9), ("complete", 0)]
