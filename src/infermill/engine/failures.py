"""``infermill failures``: the dead-lettered items, grouped by error class."""

from __future__ import annotations

import os
from typing import Any

from ..ledger import Ledger
from ..sinks import open_sink
from ..spec import JobSpec, load_spec

__all__ = ["failures"]


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
    if not os.path.exists(spec.ledger_path()):
        return result
    ledger = Ledger(spec.ledger_path())
    try:
        groups = ledger.failure_groups()
        items = ledger.dead_items()
    finally:
        ledger.close()
    result["rows_failed"] = len(items)
    result["groups"] = groups
    result["items"] = [
        {k: item[k] for k in ("item_id", "shard_id", "row_index", "error_class", "error_kind", "attempts", "message")}
        for item in items[:limit]
    ]
    return result
