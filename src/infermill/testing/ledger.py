"""``LedgerConformance``: the ledger contract as tests, which every ledger backend runs.

Subclass it in a ``Test*`` class and implement :meth:`make_ledger` (a ledger for a job, every call of one
test on the same database) and :meth:`advance_clock`. ``tests/ledger/test_sqlite.py`` and
``tests/ledger/test_postgres.py`` are the two shipped subclasses::

    class TestMyLedger(LedgerConformance):
        @pytest.fixture(autouse=True)
        def _database(self, tmp_path):
            self.location = str(tmp_path / "ledger.sqlite")
            self.clock = FakeClock()

        def make_ledger(self, job="job", *, whoami=None):
            return open_ledger(self.location, job=job, clock=self.clock, whoami=whoami)

        def advance_clock(self, seconds):
            self.clock.advance(seconds)

Needs pytest only when its tests run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import JobLockedError, LeaseLostError, LedgerError
from ..ledger import Lease, Ledger, PartCheck

__all__ = ["FakeClock", "LedgerConformance"]


class FakeClock:
    """A clock that only moves when told: ``clock()`` is the time, ``clock.advance(s)`` moves it on."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


SHARDS = [("s0", 0, '{"n": 0}', 10), ("s1", 1, '{"n": 1}', 10), ("s2", 2, '{"n": 2}', None)]
CHECK = PartCheck(bytes=123, sha256="ab" * 32, mtime_ns=1_700_000_000_000_000_000)


def _dead(row: int, message: str = "bad row") -> tuple[str, int, int, str, str, str, str]:
    return (f"id{row}", row, 1, "ValueError", "item", message, "Traceback ...")


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (a crashed run)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


class LedgerConformance(ABC):
    """The ledger contract: jobs, shards, runs, items and retry, leases (crash and resume, concurrent
    runs, stale and foreign leases, a paused holder fenced out), many jobs per database."""

    lease_seconds: float = 30.0
    """The lease length the suite uses; a backend whose clock cannot be advanced at once (a server's)
    sets a short one, since :meth:`advance_clock` then really waits."""

    @abstractmethod
    def make_ledger(self, job: str = "job", *, whoami: tuple[str, int] | None = None) -> Ledger:
        """A new connection to the ledger of ``job``; every call within one test reaches the same
        database (a new one per test). ``whoami``: the (host, pid) its leases are taken under."""

    @abstractmethod
    def advance_clock(self, seconds: float) -> None:
        """Let at least ``seconds`` pass on the ledgers' clock."""

    # -- helpers --------------------------------------------------------------------------------
    @contextmanager
    def _ledger(self, job: str = "job", *, whoami: tuple[str, int] | None = None) -> Iterator[Ledger]:
        ledger = self.make_ledger(job, whoami=whoami)
        try:
            yield ledger
        finally:
            ledger.close()

    @staticmethod
    def _plan(ledger: Ledger, name: str = "job") -> None:
        ledger.create_job(name=name, spec_fingerprint="spec", model_fingerprint="model", input_fingerprint="input",
                          output_path="out", spec_json="{}", shards=SHARDS)

    def _acquire(self, ledger: Ledger, job: str = "job") -> Lease:
        return ledger.acquire_lease(lease_seconds=self.lease_seconds, job=job)

    # -- jobs -----------------------------------------------------------------------------------
    def test_a_new_job_is_unplanned_and_keeps_its_uid(self) -> None:
        with self._ledger() as ledger:
            assert ledger.job() is None
            assert ledger.lease_holder() is None
            assert ledger.runs() == []
            assert ledger.summary().shards_total == 0
            uid = ledger.job_uid()
            assert uid
        with self._ledger() as again:
            assert again.job_uid() == uid

    def test_create_job_records_the_plan(self) -> None:
        with self._ledger() as ledger:
            self._plan(ledger)
            record = ledger.job()
            assert record is not None
            assert (record.name, record.spec_fingerprint, record.model_fingerprint, record.input_fingerprint) == (
                "job", "spec", "model", "input")
            assert record.completed_at is None and record.created_at > 0
            assert [(s.shard_id, s.ordinal, s.state, s.rows_planned) for s in ledger.shards()] == [
                ("s0", 0, "pending", 10), ("s1", 1, "pending", 10), ("s2", 2, "pending", None)]
            summary = ledger.summary()
            assert (summary.shards_total, summary.shards_pending, summary.rows_planned,
                    summary.shards_with_rows_planned) == (3, 3, 20, 2)
            ledger.set_model_fingerprint("model2")
            assert ledger.job().model_fingerprint == "model2"  # type: ignore[union-attr]

    def test_reset_forgets_results_but_keeps_the_uid(self) -> None:
        with self._ledger() as ledger:
            uid = ledger.job_uid()
            self._plan(ledger)
            lease = self._acquire(ledger)
            run_id = ledger.start_run(lease)
            ledger.mark_running("s0", lease, run_id)
            ledger.commit_shard("s0", lease, output_file="p0", rows_out=9, dead_items=[_dead(3)], run_id=run_id)
            ledger.reset()
            assert ledger.job() is None and ledger.shards() == [] and ledger.dead_items() == []
            assert ledger.job_uid() == uid
            self._plan(ledger)
            assert ledger.summary().shards_committed == 0

    def test_many_jobs_share_one_database(self) -> None:
        with self._ledger("a") as a, self._ledger("b") as b:
            assert a.job_uid() != b.job_uid()
            self._plan(a, "a")
            assert b.job() is None and b.shards() == []
            self._plan(b, "b")
            lease_a, lease_b = self._acquire(a, "a"), self._acquire(b, "b")  # one lease per job
            run_a = a.start_run(lease_a)
            a.mark_running("s0", lease_a, run_a)
            a.commit_shard("s0", lease_a, output_file="pa", rows_out=10, run_id=run_a)
            assert a.summary().shards_committed == 1 and b.summary().shards_committed == 0
            assert [r.run_id for r in b.runs()] == []
            a.reset()
            assert len(b.shards()) == 3 and b.lease_holder().token == lease_b.token  # type: ignore[union-attr]

    # -- shards, items, retry -------------------------------------------------------------------
    def test_commit_records_files_checks_and_dead_letters(self) -> None:
        with self._ledger() as ledger:
            self._plan(ledger)
            lease = self._acquire(ledger)
            run_id = ledger.start_run(lease)
            ledger.mark_running("s0", lease, run_id)
            ledger.commit_shard("s0", lease, output_file="p0", rows_out=8, errors_file="e0",
                                dead_items=[_dead(2, "b"), _dead(5, "a")], run_id=run_id, stats={"read": 1.5},
                                output_check=CHECK, errors_check=None)
            (row,) = ledger.shards("committed")
            assert (row.shard_id, row.rows_out, row.rows_failed, row.output_file, row.errors_file) == (
                "s0", 8, 2, "p0", "e0")
            parts = ledger.committed_parts()
            assert [(p.name, p.errors, p.rows, p.check) for p in parts] == [("p0", False, 8, CHECK),
                                                                            ("e0", True, 2, None)]
            items = ledger.dead_items()
            assert [(i.item_id, i.row_index, i.state, i.error_class, i.message) for i in items] == [
                ("id2", 2, "dead", "ValueError", "b"), ("id5", 5, "dead", "ValueError", "a")]
            assert ledger.dead_items("s1") == []
            (group,) = ledger.failure_groups()
            assert (group.error_class, group.count, group.example, group.first_item) == ("ValueError", 2, "a", "id2")
            summary = ledger.summary()
            assert (summary.rows_succeeded, summary.rows_failed, summary.shards_committed) == (8, 2, 1)
            assert ledger.shard_stats() == ['{"read": 1.5}']
            ledger.end_run(run_id, "complete")
            assert [(r.run_id, r.state, r.rows_done) for r in ledger.runs()] == [(run_id, "complete", 8)]

    def test_retry_resolves_items_and_replaces_dead_letters(self) -> None:
        with self._ledger() as ledger:
            self._plan(ledger)
            lease = self._acquire(ledger)
            run_id = ledger.start_run(lease)
            ledger.mark_running("s0", lease, run_id)
            ledger.commit_shard("s0", lease, output_file="p0", rows_out=7, errors_file="e0",
                                dead_items=[_dead(1), _dead(2), _dead(3)], run_id=run_id)
            retry_run = ledger.start_run(lease)
            ledger.commit_shard("s0", lease, output_file="p0-r", rows_out=9, errors_file="e0-r",
                                dead_items=[_dead(3, "still bad")], run_id=retry_run, retry=True,
                                resolved_rows=[1, 2], output_check=CHECK)
            assert [(i.row_index, i.message, i.run_id) for i in ledger.dead_items()] == [(3, "still bad", retry_run)]
            (row,) = ledger.shards("committed")
            assert (row.output_file, row.errors_file, row.rows_out, row.rows_failed) == ("p0-r", "e0-r", 9, 1)
            assert ledger.summary().rows_failed == 1

    def test_failed_damaged_and_abandoned_shards_go_back_to_pending(self) -> None:
        with self._ledger() as ledger:
            self._plan(ledger)
            lease = self._acquire(ledger)
            run_id = ledger.start_run(lease)
            for sid in ("s0", "s1", "s2"):
                ledger.mark_running(sid, lease, run_id)
            ledger.fail_shard("s0", lease, "boom")
            ledger.commit_shard("s1", lease, output_file="p1", rows_out=9, dead_items=[_dead(4)], run_id=run_id)
            ledger.requeue_shard("s2", lease)
            assert [(s.shard_id, s.state, s.error) for s in ledger.shards()] == [
                ("s0", "failed", "boom"), ("s1", "committed", None), ("s2", "pending", None)]
            ledger.mark_complete()
            assert ledger.job().completed_at is not None  # type: ignore[union-attr]
            assert ledger.requeue_failed(lease) == 1
            ledger.reopen_shards(["s1"], lease, "its committed file was missing")
            assert [s.state for s in ledger.shards()] == ["pending", "pending", "pending"]
            assert ledger.shards()[1].error == "its committed file was missing" and ledger.dead_items() == []
            assert ledger.committed_parts() == [] and ledger.job().completed_at is None  # type: ignore[union-attr]
            ledger.mark_running("s1", lease, run_id)
            ledger.mark_incomplete()

    def test_illegal_transitions_and_unknown_shards_are_refused(self) -> None:
        with self._ledger() as ledger:
            self._plan(ledger)
            lease = self._acquire(ledger)
            run_id = ledger.start_run(lease)
            with pytest_raises(LedgerError):
                ledger.commit_shard("s0", lease, output_file="p0", rows_out=1)  # pending -> committed
            with pytest_raises(LedgerError):
                ledger.mark_running("nope", lease, run_id)
            assert [s.state for s in ledger.shards()] == ["pending"] * 3

    # -- triggers of scheduled runs -------------------------------------------------------------
    def test_a_trigger_is_claimed_once_and_taken_over_by_one(self) -> None:
        with self._ledger() as first, self._ledger() as second, self._ledger("other") as other:
            assert first.claim_trigger("cron:a", kind="cron", owner="h:1", logical_date="2026-03-01", due_at=5.0)
            assert not second.claim_trigger("cron:a", kind="cron", owner="h:2")  # the same due time: once
            assert other.claim_trigger("cron:a", kind="cron", owner="h:2")  # another job's own
            assert second.take_trigger("cron:a", owner="h:2", previous="h:1")
            assert not first.take_trigger("cron:a", owner="h:3", previous="h:1")  # the owner moved on
            second.update_trigger("cron:a", state="running", attempt=True)
            second.update_trigger("cron:a", state="interrupted", exit_code=75, run_id=7, summary='{"x": 1}')
            second.update_trigger("cron:a", state="running", attempt=True)
            second.update_trigger("cron:a", state="complete", exit_code=0, run_id=8, message="complete")
            (trigger,) = first.triggers()
            assert (trigger.key, trigger.kind, trigger.logical_date, trigger.due_at, trigger.owner) == (
                "cron:a", "cron", "2026-03-01", 5.0, "h:2")
            assert (trigger.state, trigger.attempts, trigger.exit_code, trigger.run_ids) == ("complete", 2, 0, (7, 8))
            assert (trigger.summary, trigger.message) == ('{"x": 1}', "complete")
            assert first.triggers("files") == [] and [t.key for t in other.triggers("cron")] == ["cron:a"]
            assert first.last_due_at() == 5.0 and other.last_due_at() is None
            assert first.claim_trigger("files:b", kind="files", owner="h:1")
            assert first.claim_trigger("skipped:c", kind="skipped", owner="h:1", due_at=9.0, state="skipped")
            assert first.last_due_at() == 9.0
            assert [t.key for t in first.triggers(unfinished=True)] == ["files:b"]
            assert [t.key for t in first.triggers(newest=2)] == [t.key for t in first.triggers()][-2:]
            first.reset()  # --restart forgets results, not what serve has run
            assert len(first.triggers()) == 3
            with pytest_raises(LedgerError, match="unknown trigger"):
                first.update_trigger("cron:zzz", state="running")

    def test_batch_sizes_are_cached_per_job_and_key(self) -> None:
        with self._ledger("a") as a, self._ledger("b") as b:
            assert a.cached_batch_size("k") is None
            a.cache_batch_size("k", 64, [{"size": 64, "rows_per_s": 1.0}])
            a.cache_batch_size("k", 128, [])
            assert a.cached_batch_size("k") == 128 and b.cached_batch_size("k") is None

    # -- leases ---------------------------------------------------------------------------------
    def test_the_first_lease_and_its_holder(self) -> None:
        with self._ledger() as ledger:
            lease = self._acquire(ledger)
            assert lease.token == 1 and (lease.host, lease.pid) == (socket.gethostname(), _own_pid())
            holder = ledger.lease_holder()
            assert holder is not None
            assert (holder.token, holder.host, holder.pid, holder.released) == (1, lease.host, lease.pid, False)
            assert 0 <= holder.heartbeat_age < self.lease_seconds
            assert ledger.heartbeat(lease)
            ledger.check_fence(lease)

    def test_concurrent_runs_one_gets_the_lease(self) -> None:
        ledgers = [self.make_ledger() for _ in range(6)]
        barrier = threading.Barrier(len(ledgers))
        won: list[Lease] = []
        locked: list[str] = []

        def contend(ledger: Ledger) -> None:
            barrier.wait()
            try:
                won.append(self._acquire(ledger))
            except JobLockedError as exc:
                locked.append(str(exc))

        threads = [threading.Thread(target=contend, args=(ledger,)) for ledger in ledgers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for ledger in ledgers:
            ledger.close()
        assert len(won) == 1 and len(locked) == len(ledgers) - 1
        assert all("another run of job 'job' is active" in text for text in locked)

    def test_a_released_lease_is_free_and_the_epoch_goes_up(self) -> None:
        with self._ledger() as first, self._ledger() as second:
            lease = self._acquire(first)
            first.release_lease(lease)
            assert first.lease_holder().released  # type: ignore[union-attr]
            nxt = self._acquire(second)
            assert nxt.token == lease.token + 1
            assert not first.heartbeat(lease)

    def test_a_foreign_live_lease_blocks(self) -> None:
        with self._ledger(whoami=("other-host", 4242)) as foreign, self._ledger() as ledger:
            self._acquire(foreign)
            with pytest_raises(JobLockedError, match="host other-host, pid 4242"):
                self._acquire(ledger)

    def test_a_stale_foreign_lease_is_taken_over(self) -> None:
        with self._ledger(whoami=("other-host", 4242)) as foreign, self._ledger() as ledger:
            self._plan(foreign)
            old = self._acquire(foreign)
            old_run = foreign.start_run(old)
            self.advance_clock(self.lease_seconds + 0.5)
            assert ledger.lease_holder().heartbeat_age > self.lease_seconds  # type: ignore[union-attr]
            new = self._acquire(ledger)
            assert new.token == old.token + 1
            (run,) = ledger.runs()
            assert (run.run_id, run.state) == (old_run, "interrupted") and run.ended_at is not None

    def test_heartbeat_keeps_a_lease_alive(self) -> None:
        with self._ledger(whoami=("other-host", 4242)) as holder, self._ledger() as other:
            lease = self._acquire(holder)
            self.advance_clock(self.lease_seconds * 0.6)
            assert holder.heartbeat(lease)
            self.advance_clock(self.lease_seconds * 0.6)
            with pytest_raises(JobLockedError):
                self._acquire(other)

    def test_crash_then_resume(self) -> None:
        """A run of this host dies (its process is gone): the next run takes over at once, its run is
        interrupted, its committed shard stays, its running shard is done again."""
        dead = (socket.gethostname(), _dead_pid())
        with self._ledger(whoami=dead) as crashed:
            self._plan(crashed)
            lease = self._acquire(crashed)
            run_id = crashed.start_run(lease)
            crashed.mark_running("s0", lease, run_id)
            crashed.commit_shard("s0", lease, output_file="p0", rows_out=10, run_id=run_id, output_check=CHECK)
            crashed.mark_running("s1", lease, run_id)
        with self._ledger() as resumed:
            new = self._acquire(resumed)
            assert new.token == lease.token + 1
            new_run = resumed.start_run(new)
            assert [s.state for s in resumed.shards()] == ["committed", "pending", "pending"]
            assert [(r.run_id, r.state) for r in resumed.runs()] == [(run_id, "interrupted"), (new_run, "running")]
            assert [p.check for p in resumed.committed_parts()] == [CHECK]

    def test_a_paused_holder_is_fenced_out(self) -> None:
        with self._ledger(whoami=("paused-host", 1)) as old, self._ledger() as new:
            self._plan(old)
            lease_old = self._acquire(old)
            run_old = old.start_run(lease_old)
            old.mark_running("s0", lease_old, run_old)
            self.advance_clock(self.lease_seconds + 0.5)  # the old holder stalls past its lease
            lease_new = self._acquire(new)
            assert lease_new.token == lease_old.token + 1
            with pytest_raises(LeaseLostError):
                old.commit_shard("s0", lease_old, output_file="part-00000.parquet", rows_out=10, run_id=run_old)
            with pytest_raises(LeaseLostError):
                old.check_fence(lease_old)
            with pytest_raises(LeaseLostError):
                old.mark_running("s1", lease_old, run_old)
            with pytest_raises(LeaseLostError):
                old.start_run(lease_old)
            assert not old.heartbeat(lease_old)
            old.release_lease(lease_old)  # a fenced holder's release does not free the new holder's lease
            assert new.lease_holder().token == lease_new.token  # type: ignore[union-attr]
            assert not new.lease_holder().released  # type: ignore[union-attr]
            new.start_run(lease_new)
            assert [s.state for s in new.shards()] == ["pending", "pending", "pending"]
            assert new.committed_parts() == []


def _own_pid() -> int:
    import os

    return os.getpid()


def pytest_raises(exc: type[BaseException], match: str | None = None) -> Any:
    """``pytest.raises``, imported when a test runs (the package does not depend on pytest)."""
    import pytest

    return pytest.raises(exc, match=match)

