"""The event stream: typed events from workers (threads or processes) and the coordinator, handed to a
run's subscribers in order; a subscriber that raises is dropped, never the run."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import infermill
from infermill.engine.events import (
    Event,
    Progress,
    RunEnded,
    RunStarted,
    ShardCommitted,
    ShardStaged,
    ShardStarted,
    WorkerExited,
    WorkerFatal,
    WorkerReady,
)
from infermill.errors import ModelLoadError


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_tells_its_subscribers_everything_in_order(parquet_job, workers: int) -> None:
    job, _ = parquet_job(rows=6_000, files=2, shard_rows=2_000, workers=workers)
    recorder = Recorder()
    result = infermill.run(job, progress="off", subscribers=[recorder])
    events = recorder.events
    assert isinstance(events[0], RunStarted) and events[0].shards_pending == events[0].shards_total == 3
    assert isinstance(events[-1], RunEnded) and events[-1].state == "complete"
    assert events[-1].run_id == events[0].run_id
    committed = [e for e in events if isinstance(e, ShardCommitted)]
    assert sum(e.rows_succeeded for e in committed) == result.rows_succeeded == 6_000
    assert all(e.output is not None and e.output.name.startswith("part-") for e in committed)
    assert sum(e.rows for e in events if isinstance(e, Progress)) == 6_000
    for commit in committed:
        started = next(i for i, e in enumerate(events) if isinstance(e, ShardStarted) and e.shard_id == commit.shard_id)
        staged = next(i for i, e in enumerate(events) if isinstance(e, ShardStaged) and e.shard_id == commit.shard_id)
        assert started < staged < events.index(commit)
    assert len([e for e in events if isinstance(e, WorkerExited)]) == workers
    assert len([e for e in events if isinstance(e, WorkerReady)]) == workers


def test_a_subscriber_that_raises_is_dropped_not_the_run(parquet_job, capfd: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)

    class Broken:
        def on_event(self, event: Event) -> None:
            raise RuntimeError("dashboard is down")

    recorder = Recorder()
    result = infermill.run(job, progress="off", subscribers=[Broken(), recorder])
    assert result.state == "complete"
    assert isinstance(recorder.events[-1], RunEnded)
    err = capfd.readouterr().err
    assert err.count("raised RuntimeError: dashboard is down; it gets no more events") == 1


def test_a_failed_run_ends_with_its_error(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    (job_dir / "scorer.py").write_text("class Scorer:\n    def setup(self):\n        raise RuntimeError('no key')\n"
                                       "    def predict(self, batch):\n        return {}\n")
    recorder = Recorder()
    with pytest.raises(ModelLoadError):
        infermill.run(job, progress="off", subscribers=[recorder])
    fatal = [e for e in recorder.events if isinstance(e, WorkerFatal)]
    assert len(fatal) == 1 and "no key" in str(fatal[0].error)
    assert isinstance(recorder.events[-1], RunEnded) and recorder.events[-1].state == "failed"


def test_worker_events_cross_process_boundaries() -> None:
    event = WorkerFatal(3, ModelLoadError("model setup failed", hint="fix it"))
    back = pickle.loads(pickle.dumps(event))
    assert back.worker == 3 and back.error.hint == "fix it" and isinstance(back.error, ModelLoadError)
