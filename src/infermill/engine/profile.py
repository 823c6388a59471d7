"""``infermill profile``: the stage profile of a job's committed shards, from its ledger."""

from __future__ import annotations

import json
import os

from ..errors import SpecError
from ..ledger import Ledger, ledger_exists, open_ledger
from ..observe.profile import Profile, profile_from_stats
from ..spec import JobSpec, load_spec

__all__ = ["profile", "profile_of"]


def profile_of(ledger: Ledger, since: float | None = None) -> Profile:
    """The profile of the ledger's committed shards, start-up told apart by the runs' spans. ``since``: the
    wall-clock start of the current run's call (planning included), which the ledger's run record begins
    after."""
    stats = [json.loads(raw) for raw in ledger.shard_stats() if raw]
    runs: list[tuple[float, float | None]] = [(r.started_at, r.ended_at) for r in ledger.runs()]
    if since is not None and runs:
        start, end = runs[-1]
        runs[-1] = (min(since, start), end)
    return profile_from_stats(stats, runs)


def profile(job: JobSpec | str | os.PathLike[str]) -> Profile:
    """Stage totals and the bottleneck verdict over the job's committed shards."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    if not ledger_exists(spec.ledger_path(), spec.name):
        raise SpecError(
            f"job '{spec.name}' has not run yet: nothing to profile", hint="run it first: infermill run JOB"
        )
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    try:
        return profile_of(ledger)
    finally:
        ledger.close()
