"""The frozen run plan: planned once, kept in the ledger, reused by every resume.

Planning reads metadata (every Parquet footer, for instance), which for an input of many files costs
more than a short resume. So the first run stores its plan in the ledger: the shard descriptors (the
``shards`` table) and a record (``jobs.plan_json``) with the listing's fingerprint and the columns. A
later run lists the input (one listing per run; workers never list again) and, when the listing is
unchanged, takes the shards from the ledger instead of planning again: no footer is read twice. When the
listing changed, it plans again, and the input fingerprint decides (``the input files changed``).

An incremental run (the input changed, nothing else did) brings the stored plan up to date instead:
the source's ``plan_delta`` keeps the shards of unchanged files and plans only the rest, and
:func:`next_ordinal` numbers the new shards after every shard the job ever had, so a kept shard's
ordinal, id and part name never change and a new shard never takes a removed one's part name.
"""

from __future__ import annotations

import json
from typing import Any

from ..ledger import JobRecord, Ledger
from ..sources.base import Shard, Source
from .columns import Columns

__all__ = ["PLAN_VERSION", "next_ordinal", "plan_record", "stored_shards"]

PLAN_VERSION = 1


def plan_record(source: Source, columns: Columns, shards: list[Shard], first_free: int = 0) -> str:
    """The plan record stored with the job (JSON). ``first_free``: an ordinal no earlier shard had (see
    :func:`next_ordinal`)."""
    record: dict[str, Any] = {
        "version": PLAN_VERSION,
        "listing": source.listing_fingerprint(),
        "shards": len(shards),
        "next_ordinal": max(first_free, max((s.ordinal for s in shards), default=-1) + 1),
        "columns": {"id": columns.id, "features": columns.features, "keep": columns.keep, "read": columns.read},
    }
    return json.dumps(record, sort_keys=True, default=str)


def stored_shards(record: JobRecord | None, ledger: Ledger, source: Source) -> list[Shard] | None:
    """The job's shards as planned by an earlier run, when the input's listing has not changed since
    (their files located where they are now); None when the input must be planned again."""
    if record is None or not record.plan_json:
        return None
    try:
        plan = json.loads(record.plan_json)
    except ValueError:
        return None
    if plan.get("version") != PLAN_VERSION or plan.get("listing") is None:
        return None
    if source.listing_fingerprint() != plan["listing"]:
        return None
    rows = ledger.shards()
    if len(rows) != plan.get("shards"):
        return None
    return source.relocate([Shard.from_json(row.descriptor) for row in rows])


def next_ordinal(record: JobRecord | None, shards: list[Shard]) -> int:
    """The first ordinal no shard of the job ever had: past the shards it has and those it removed."""
    stored = 0
    if record is not None and record.plan_json:
        try:
            stored = int(json.loads(record.plan_json).get("next_ordinal") or 0)
        except (ValueError, TypeError, AttributeError):
            stored = 0
    return max(stored, max((s.ordinal for s in shards), default=-1) + 1)
