"""Durable job state: jobs, runs, shards, dead letters and the lease. SQLite by default, PostgreSQL for
``[runtime] ledger = "postgresql://..."``; both behind the :class:`Ledger` protocol.

A ledger location is a file path (SQLite) or a URL whose scheme names a backend of the registry's
``ledgers`` group (``postgresql``, or a plugin's). A backend class is constructed as
``cls(location, job=..., whoami=..., clock=...)`` and may define the classmethods
``job_exists(location, job)`` (default: True, so the ledger is opened to read the job) and
``display(location)`` (default: the location with any URL password masked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ._sql import holder_is_dead, lease_is_live
from .base import (
    TRIGGER_DONE,
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
    TriggerRecord,
)
from .states import JOB_STATES, JobState, RunState, ShardState, derive_job_state

__all__ = [
    "JOB_STATES",
    "TRIGGER_DONE",
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
    "TriggerRecord",
    "backend_class",
    "backend_name",
    "derive_job_state",
    "display_location",
    "holder_is_dead",
    "is_postgres",
    "lease_is_live",
    "ledger_exists",
    "open_ledger",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) ledger URL."""
    return location.lower().startswith(_POSTGRES_SCHEMES)


def backend_name(location: str) -> str:
    """The registry name of the backend for ``location``: ``sqlite`` for a path, else the URL's scheme
    (``postgres://`` is ``postgresql``)."""
    from ..spec import is_url

    if not is_url(location):
        return "sqlite"
    scheme = location.split("://", 1)[0].lower()
    return "postgresql" if scheme == "postgres" else scheme


def backend_class(location: str) -> Any:
    """The ledger class for ``location``, from :mod:`infermill.registry` (group ``ledgers``)."""
    from .. import registry

    return registry.load("ledgers", backend_name(location))


def display_location(location: str) -> str:
    """The ledger's location fit for messages, logs and status: credentials masked."""
    if backend_name(location) == "sqlite":
        return location
    from ..redact import mask_url

    try:
        display = getattr(backend_class(location), "display", None)
    except Exception:  # noqa: BLE001 - an unknown or uninstalled backend: still never show the password
        display = None
    return display(location) if callable(display) else mask_url(location)


def open_ledger(
    location: str,
    *,
    job: str,
    clock: Callable[[], float] | None = None,
    whoami: tuple[str, int] | None = None,
) -> Ledger:
    """Open ``job``'s ledger at ``location``: an SQLite file path, a ``postgresql://`` URL, or the URL of
    a backend a plugin registers (group ``ledgers``, named by the URL's scheme).

    ``clock`` (SQLite only) replaces ``time.time`` as the lease clock, for tests; a PostgreSQL ledger
    always uses the server's clock. ``whoami`` is the (host, pid) leases are taken under.

    >>> ledger = open_ledger(".infermill/scores.sqlite", job="scores")   # doctest: +SKIP
    """
    ledger: Ledger = backend_class(location)(location, job=job, clock=clock, whoami=whoami)
    return ledger


def ledger_exists(location: str, job: str) -> bool:
    """Whether ``job`` has a ledger at ``location`` yet (nothing is created to find out)."""
    if backend_name(location) == "sqlite":
        return os.path.exists(location)
    exists = getattr(backend_class(location), "job_exists", None)
    return bool(exists(location, job)) if callable(exists) else True


