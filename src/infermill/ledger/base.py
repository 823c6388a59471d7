"""The ledger protocol and its typed records.

A ledger keeps the durable state of jobs: one ``jobs`` row per job name (the natural key, with the
``job_uid`` the job's output is claimed with), and its runs, shards, dead-lettered items, cached batch
sizes and lease, each row carrying the job's id, so many jobs can share one database. A ledger object is
opened for one job (``open_ledger(location, job=name)``) and reads and writes only that job's rows.

Backends: :class:`~infermill.ledger.sqlite.SQLiteLedger` (the default, one file per job beside the job
file) and :class:`~infermill.ledger.postgres.PostgresLedger` (``[runtime] ledger = "postgresql://..."``).
Both pass :class:`infermill.testing.LedgerConformance`.

Leases fence writers: every acquisition increments the job's ``token`` (the fencing epoch), and every
write that records work re-checks the caller's token in the same transaction. Lease times come from
the ledger's clock: an injectable one for SQLite (tests advance it instead of sleeping), the database
server's for PostgreSQL, never a worker's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "TRIGGER_DONE",
    "CommittedPart",
    "DeadItemRecord",
    "FailureGroup",
    "JobRecord",
    "Lease",
    "LeaseHolder",
    "Ledger",
    "LedgerSummary",
    "PartCheck",
    "RunRecord",
    "ShardRow",
    "TriggerRecord",
]


@dataclass(frozen=True)
class Lease:
    """This run's hold on the job; ``token`` (the fencing epoch) fences its writes."""

    token: int
    host: str
    pid: int


@dataclass(frozen=True)
class LeaseHolder:
    """The job's lease row as the ledger keeps it."""

    token: int
    run_id: int | None
    host: str
    pid: int
    acquired_at: float
    heartbeat_at: float
    released: bool
    heartbeat_age: float
    """Seconds since the last heartbeat, by the ledger's clock (the database server's for PostgreSQL)."""


@dataclass(frozen=True)
class JobRecord:
    """A planned job: its fingerprints and where its output goes."""

    name: str
    job_uid: str
    spec_fingerprint: str
    model_fingerprint: str
    input_fingerprint: str
    output_path: str
    spec_json: str
    created_at: float
    completed_at: float | None
    """Set when the manifest was written; None while the output is incomplete or being changed."""
    plan_json: str | None = None
    """The frozen run plan (JSON): what a resume needs to skip planning again (see ``engine/plan.py``)."""


@dataclass(frozen=True)
class RunRecord:
    """One ``run`` or ``retry`` of the job."""

    run_id: int
    token: int
    host: str
    pid: int
    started_at: float
    ended_at: float | None
    state: str
    rows_done: int
    message: str | None


@dataclass(frozen=True)
class ShardRow:
    shard_id: str
    ordinal: int
    descriptor: str
    state: str
    rows_planned: int | None
    rows_out: int | None
    rows_failed: int
    output_file: str | None
    error: str | None
    errors_file: str | None = None


@dataclass(frozen=True)
class DeadItemRecord:
    """A dead-lettered (or, after a successful retry, resolved) input row."""

    shard_id: str
    row_index: int
    item_id: str
    state: str
    attempts: int
    error_class: str
    error_kind: str
    message: str
    traceback: str | None
    run_id: int | None
    updated_at: float


@dataclass(frozen=True)
class FailureGroup:
    """Dead letters of one error class: how many, and one example."""

    error_class: str
    error_kind: str
    count: int
    example: str
    first_item: str


@dataclass(frozen=True)
class LedgerSummary:
    """The job's shard and row counts."""

    shards_total: int
    shards_committed: int
    shards_failed: int
    shards_pending: int
    shards_running: int
    rows_succeeded: int
    rows_failed: int
    rows_planned: int | None
    """Sum of the shards' planned rows (None without shards)."""
    shards_with_rows_planned: int


@dataclass(frozen=True)
class PartCheck:
    """What the ledger keeps of a committed file to tell later whether it is still intact."""

    bytes: int
    sha256: str
    mtime_ns: int | None


@dataclass(frozen=True)
class CommittedPart:
    """One committed file of a shard: its result part or its dead-letter part."""

    shard_id: str
    ordinal: int
    errors: bool
    """True for the shard's ``_errors/`` file."""
    name: str
    rows: int
    check: PartCheck | None
    """None for files committed by a release that did not record checks."""


@dataclass(frozen=True)
class TriggerRecord:
    """One reason ``infermill serve`` ran (or will run) the job: a cron due time or a set of new input files.

    ``key`` is derived from what fired it (``cron:<due time UTC>``, ``files:<digest of the listing>``), so
    two ``serve`` processes, or one restarted, that see the same due time or the same files claim the same
    row and only one of them runs it."""

    key: str
    kind: str
    """cron, files, or skipped (due times that ``catchup`` chose not to run)."""
    logical_date: str | None
    """The date the run is for (``YYYY-MM-DD`` in the schedule's time zone), passed to the run."""
    due_at: float | None
    """Epoch seconds of the cron due time (None for file triggers)."""
    detail: str
    """JSON: what fired it (the files seen, how many due times were skipped)."""
    state: str
    """pending (claimed, not run yet), running, complete, failed, invalid, locked, interrupted, killed,
    skipped."""
    owner: str
    """The ``host:pid`` of the ``serve`` process that claimed (or took over) the trigger."""
    attempts: int
    exit_code: int | None
    message: str | None
    summary: str | None
    """JSON: the last run's summary (``infermill run --summary-json``)."""
    run_ids: tuple[int, ...]
    """The ledger's runs this trigger's attempts started (an attempt that found nothing to do starts none)."""
    created_at: float
    updated_at: float


TRIGGER_DONE = ("complete", "failed", "invalid", "killed", "skipped")
"""Trigger states that are final: ``serve`` never runs such a trigger again."""


class Ledger(Protocol):
    """What the engine needs of a job's durable state. Every method acts on the job the ledger was opened
    for; every method that records work takes the caller's :class:`Lease` and refuses (``LeaseLostError``)
    once another run took the lease over."""

    @property
    def path(self) -> str:
        """Where the ledger is, fit for messages (credentials masked)."""
        ...

    def job_uid(self) -> str: ...
    def close(self) -> None: ...

    # job
    def job(self) -> JobRecord | None: ...
    def create_job(
        self, *, name: str, spec_fingerprint: str, model_fingerprint: str, input_fingerprint: str,
        output_path: str, spec_json: str, shards: Sequence[tuple[str, int, str, int | None]],
        plan_json: str | None = None,
    ) -> None: ...
    def reset(self) -> None: ...
    def replan(
        self, lease: Lease, *, drop: Sequence[str], add: Sequence[tuple[str, int, str, int | None]],
        input_fingerprint: str, plan_json: str | None,
    ) -> None: ...
    def mark_complete(self) -> None: ...
    def mark_incomplete(self) -> None: ...
    def set_model_fingerprint(self, fingerprint: str) -> None: ...

    # lease
    def lease_holder(self) -> LeaseHolder | None: ...
    def acquire_lease(self, *, lease_seconds: float, job: str) -> Lease: ...
    def heartbeat(self, lease: Lease) -> bool: ...
    def release_lease(self, lease: Lease) -> None: ...
    def check_fence(self, lease: Lease) -> None: ...

    # runs
    def start_run(self, lease: Lease) -> int: ...
    def end_run(self, run_id: int, state: str, message: str | None = None) -> None: ...
    def runs(self) -> list[RunRecord]: ...

    # shards and items
    def shards(self, state: str | None = None) -> list[ShardRow]: ...
    def mark_running(self, shard_id: str, lease: Lease, run_id: int) -> None: ...
    def commit_shard(
        self, shard_id: str, lease: Lease, *, output_file: str | None, rows_out: int,
        errors_file: str | None = None, dead_items: Sequence[tuple[Any, ...]] = (), run_id: int | None = None,
        stats: dict[str, Any] | None = None, retry: bool = False, resolved_rows: Sequence[int] = (),
        output_check: PartCheck | None = None, errors_check: PartCheck | None = None,
    ) -> None: ...
    def fail_shard(self, shard_id: str, lease: Lease, error: str) -> None: ...
    def requeue_shard(self, shard_id: str, lease: Lease) -> None: ...
    def reopen_shards(self, shard_ids: Sequence[str], lease: Lease, reason: str) -> None: ...
    def requeue_failed(self, lease: Lease) -> int: ...
    def dead_items(self, shard_id: str | None = None) -> list[DeadItemRecord]: ...
    def failure_groups(self) -> list[FailureGroup]: ...
    def summary(self) -> LedgerSummary: ...
    def committed_parts(self) -> list[CommittedPart]: ...
    def shard_stats(self) -> list[str]: ...

    # batch sizes chosen by size = "auto"
    def cached_batch_size(self, key: str) -> int | None: ...
    def cache_batch_size(self, key: str, size: int, probes: list[dict[str, Any]]) -> None: ...

    # triggers of scheduled runs (``infermill serve``); not fenced by the lease: serve does not hold it
    def claim_trigger(
        self, key: str, *, kind: str, owner: str, logical_date: str | None = None, due_at: float | None = None,
        detail: str = "{}", state: str = "pending",
    ) -> bool: ...
    def take_trigger(self, key: str, *, owner: str, previous: str) -> bool: ...
    def update_trigger(
        self, key: str, *, state: str, exit_code: int | None = None, message: str | None = None,
        summary: str | None = None, run_id: int | None = None, attempt: bool = False,
    ) -> None: ...
    def triggers(
        self, kind: str | None = None, *, unfinished: bool = False, newest: int | None = None
    ) -> list[TriggerRecord]: ...
    def last_due_at(self) -> float | None: ...
