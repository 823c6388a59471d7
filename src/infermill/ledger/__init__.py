"""Durable job state: shards, runs and the lease. SQLite by default."""

from __future__ import annotations

from .sqlite import Lease, Ledger, ShardRow
from .states import JOB_STATES, JobState, RunState, ShardState

__all__ = ["JOB_STATES", "JobState", "Lease", "Ledger", "RunState", "ShardRow", "ShardState"]
