"""Durable job state: jobs, runs, shards, dead letters and the lease. SQLite by default, PostgreSQL for
``[runtime] ledger = "postgresql://..."``; both behind the :class:`Ledger` protocol."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ._sql import lease_is_live
from .base import (
    CommittedPart,
    DeadItemRecord,
    FailureGroup,
    JobRecord,
    Lease,
    LeaseHolder,
    Ledger,
    LedgerSummary,
    PartCheck,
    RunRecord,
    ShardRow,
)
from .states import JOB_STATES, JobState, RunState, ShardState, derive_job_state

__all__ = [
    "JOB_STATES",
    "CommittedPart",
    "DeadItemRecord",
    "FailureGroup",
    "JobRecord",
    "JobState",
    "Lease",
    "LeaseHolder",
    "Ledger",
    "LedgerSummary",
    "PartCheck",
    "RunRecord",
    "RunState",
    "ShardRow",
    "ShardState",
    "derive_job_state",
    "display_location",
    "is_postgres",
    "lease_is_live",
    "ledger_exists",
    "open_ledger",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) ledger URL."""
    return location.lower().startswith(_POSTGRES_SCHEMES)


def display_location(location: str) -> str:
    """The ledger's location fit for messages, logs and status: credentials masked."""
    if is_postgres(location):
        from .postgres import display_url

        return display_url(location)
    return location


def open_ledger(
    location: str,
    *,
    job: str,
    clock: Callable[[], float] | None = None,
    whoami: tuple[str, int] | None = None,
) -> Ledger:
    """Open ``job``'s ledger at ``location``: an SQLite file path, or a ``postgresql://`` URL.

    ``clock`` (SQLite only) replaces ``time.time`` as the lease clock, for tests; a PostgreSQL ledger
    always uses the server's clock. ``whoami`` is the (host, pid) leases are taken under.

    >>> ledger = open_ledger(".infermill/scores.sqlite", job="scores")   # doctest: +SKIP
    """
    if is_postgres(location):
        from .postgres import PostgresLedger

        return PostgresLedger(location, job=job, whoami=whoami)
    from .sqlite import SQLiteLedger

    return SQLiteLedger(location, job=job, clock=clock or time.time, whoami=whoami)


def ledger_exists(location: str, job: str) -> bool:
    """Whether ``job`` has a ledger at ``location`` yet (nothing is created to find out)."""
    if is_postgres(location):
        from .postgres import postgres_job_exists

        return postgres_job_exists(location, job)
    return os.path.exists(location)
