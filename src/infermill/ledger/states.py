"""Shard, run and job states, and the only transitions allowed between them.

Shards::

    pending ──> running ──> committed ──> (its file missing or changed) pending
       ^           │
       └───────────┴──> failed ──> (retry) pending

A shard found ``running`` when a run starts belongs to a run that crashed: it goes back to ``pending``.
A committed shard whose file a later run (or ``status``) finds missing or changed is recomputed: it goes
back to ``pending`` with a warning.

Runs: ``running -> complete | failed | interrupted``; a ``running`` run whose lease went stale crashed
and is reported as ``interrupted``. A job's state is derived: the latest run's, or ``pending`` before any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

from ..errors import LedgerError

if TYPE_CHECKING:
    from .base import JobRecord, LedgerSummary, RunRecord

__all__ = ["JOB_STATES", "JobState", "RunState", "ShardState", "check_shard_transition", "derive_job_state"]

ShardState = Literal["pending", "running", "committed", "failed"]
RunState = Literal["running", "complete", "failed", "interrupted"]
JobState = Literal["pending", "running", "complete", "failed", "interrupted", "damaged"]
JOB_STATES: tuple[JobState, ...] = ("pending", "running", "complete", "failed", "interrupted", "damaged")

_SHARD_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"running", "failed"},
    "running": {"committed", "failed", "pending"},
    "failed": {"pending"},
    "committed": {"pending"},
}


def check_shard_transition(old: str, new: str, shard_id: str) -> None:
    """Raise LedgerError for a transition the state machine does not allow."""
    if new not in _SHARD_TRANSITIONS.get(old, set()):
        raise LedgerError(f"shard {shard_id}: illegal state change {old} -> {new}")


def derive_job_state(
    job: JobRecord | None,
    summary: LedgerSummary,
    last_run: RunRecord | None,
    *,
    lease_live: bool,
    damaged: bool,
) -> JobState:
    """A job's state from its records: ``complete`` once its manifest was written with every shard
    committed (``damaged`` if a committed part is since missing or changed), ``running`` while its latest
    run holds a live lease, ``pending`` before any run, ``interrupted`` for a latest run that died without
    recording an end, else the latest run's own end state."""
    state: JobState
    if job is not None and job.completed_at is not None and summary.shards_committed == summary.shards_total:
        state = "damaged" if damaged else "complete"
    elif last_run is None:
        state = "pending"
    elif last_run.state == "running":
        state = "running" if lease_live else "interrupted"
    else:
        state = cast(JobState, last_run.state)
    return state
