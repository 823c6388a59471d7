"""``infermill profile``: the stage profile of a job's committed shards, from its ledger."""

from __future__ import annotations

import json
import os
from typing import Any

from ..accelerate.report import described
from ..errors import SpecError
from ..ledger import ledger_exists, open_ledger
from ..observe.profile import Profile, profile_from_stats
from ..spec import JobSpec, load_spec

__all__ = ["acceleration", "profile"]


def profile(job: JobSpec | str | os.PathLike[str]) -> Profile:
    """Stage totals and the bottleneck verdict over the job's committed shards."""
    return profile_from_stats(_shard_stats(job))


def acceleration(job: JobSpec | str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``[model] accelerate`` decisions recorded with the job's committed shards (``accelerate.report``)."""
    return described(_shard_stats(job))


def _shard_stats(job: JobSpec | str | os.PathLike[str]) -> list[dict[str, Any]]:
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    if not ledger_exists(spec.ledger_path(), spec.name):
        raise SpecError(
            f"job '{spec.name}' has not run yet: nothing to profile", hint="run it first: infermill run JOB"
        )
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    try:
        return [json.loads(raw) for raw in ledger.shard_stats() if raw]
    finally:
        ledger.close()
