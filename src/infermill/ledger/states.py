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

from typing import Literal

from ..errors import LedgerError

__all__ = ["JOB_STATES", "JobState", "RunState", "ShardState", "check_shard_transition"]

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
