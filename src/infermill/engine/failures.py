"""``infermill failures``: the dead-lettered items, grouped by error class."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from ..ledger import ledger_exists, open_ledger
from ..sinks import open_sink
from ..spec import JobSpec, load_spec

__all__ = ["failures"]

_ITEM_KEYS = ("item_id", "shard_id", "row_index", "error_class", "error_kind", "attempts", "message")


def failures(job: JobSpec | str | os.PathLike[str], *, limit: int = 20) -> dict[str, Any]:
    """Dead letters of the job: totals, groups by error class (count, example), and the first items."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    sink = open_sink(spec)
    result: dict[str, Any] = {
        "job": spec.name,
        "rows_failed": 0,
        "groups": [],
        "items": [],
        "errors_dir": sink.display("_errors"),
    }
    if not ledger_exists(spec.ledger_path(), spec.name):
        return result
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    try:
        groups = ledger.failure_groups()
        items = ledger.dead_items()
    finally:
        ledger.close()
    result["rows_failed"] = len(items)
    result["groups"] = [asdict(g) for g in groups]
    result["items"] = [
        {k: getattr(item, k) for k in _ITEM_KEYS}
        for item in items[:limit]
    ]
    return result
