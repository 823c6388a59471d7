"""``infermill profile``: the stage profile of a job's committed shards, from its ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..accelerate.report import described
from ..errors import SpecError
from ..ledger import Ledger, ledger_exists, open_ledger
from ..observe.profile import Profile, profile_from_stats
from ..spec import JobSpec, load_spec

T = TypeVar("T")

__all__ = ["acceleration", "profile", "profile_of"]


def profile_of(ledger: Ledger, since: float | None = None) -> Profile:
    """The profile of the ledger's committed shards, start-up told apart by the runs' spans. ``since``: the
    wall-clock start of the current run's call (planning included), which the ledger's run record begins
    after."""
    runs: list[tuple[float, float | None]] = [(r.started_at, r.ended_at) for r in ledger.runs()]
    if since is not None and runs:
        start, end = runs[-1]
        runs[-1] = (min(since, start), end)
    return profile_from_stats(_stats(ledger), runs)


def profile(job: JobSpec | str | os.PathLike[str]) -> Profile:
    """Stage totals and the bottleneck verdict over the job's committed shards."""
    return _with_ledger(job, profile_of)


def acceleration(job: JobSpec | str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``[model] accelerate`` decisions recorded with the job's committed shards (``accelerate.report``)."""
    return _with_ledger(job, lambda ledger: described(_stats(ledger)))


def _stats(ledger: Ledger) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in ledger.shard_stats() if raw]


def _with_ledger(job: JobSpec | str | os.PathLike[str], read: Callable[[Ledger], T]) -> T:
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    if not ledger_exists(spec.ledger_path(), spec.name):
        raise SpecError(
            f"job '{spec.name}' has not run yet: nothing to profile", hint="run it first: infermill run JOB"
        )
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    try:
        return read(ledger)
    finally:
        ledger.close()
