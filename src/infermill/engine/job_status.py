"""``infermill status``: a job's state read from its ledger, without running anything.

Kept apart from the runner so that reading a job's state imports neither the model adapters nor the
worker pipeline (no numpy, no pyarrow): only the spec, the ledger and the output's sink.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..accelerate.report import described
from ..ledger import LedgerSummary, derive_job_state, display_location, lease_is_live
from ..sinks import open_sink
from ..spec import JobSpec
from .lease import as_spec, connect, has_ledger
from .outputs import damaged_parts

__all__ = ["rows_total", "status"]


def rows_total(summary: LedgerSummary, complete: bool) -> int | None:
    """The job's input rows: planned, or once complete the rows scored and failed (a CSV or JSONL job's
    count is unknown until then: None)."""
    if summary.shards_with_rows_planned == summary.shards_total:
        return int(summary.rows_planned or 0)
    if complete:
        return summary.rows_succeeded + summary.rows_failed
    return None


def status(job: JobSpec | str | os.PathLike[str]) -> dict[str, Any]:
    """The job's state from its ledger, without running anything.

    Keys: ``state`` (pending, running, complete, failed, interrupted, damaged: complete but a committed
    part is missing or changed, see ``damaged_parts``; a rerun recomputes those), ``rows_total``, ``rows_succeeded``,
    ``rows_failed``, ``shards_total``, ``shards_committed``, ``shards_failed``, ``runs``, ``last_run``,
    ``input_changes`` (committed shards whose input changed since, e.g. rows inserted into a SQL key range
    that already ran), ``accelerate`` (the ``[model] accelerate`` decisions recorded with committed shards,
    see ``accelerate.report.described``), ...
    """
    spec = as_spec(job)
    base: dict[str, Any] = {
        "job": spec.name,
        "ledger": display_location(spec.ledger_path()),
        # A pathless output (a table) is shown as its sink names it, credentials masked.
        "output": spec.resolve(spec.output.path) if spec.output.path else open_sink(spec).display(),
    }
    if not has_ledger(spec):
        return {
            **base,
            "state": "pending",
            "rows_total": None,
            "rows_succeeded": 0,
            "rows_failed": 0,
            "shards_total": 0,
            "shards_committed": 0,
            "shards_failed": 0,
            "runs": 0,
            "last_run": None,
            "failed_shards": [],
            "damaged_parts": [],
            "input_changes": [],
            "accelerate": [],
        }
    ledger = connect(spec)
    try:
        summary = ledger.summary()
        record = ledger.job()
        runs = ledger.runs()
        holder = ledger.lease_holder()
        last = runs[-1] if runs else None
        live = lease_is_live(holder, spec.runtime.lease_seconds)
        damaged = damaged_parts(ledger, open_sink(spec))
        state = derive_job_state(record, summary, last, lease_live=live, damaged=bool(damaged))
        total = rows_total(summary, state == "complete")
        failed = [
            {"shard": row.shard_id, "error": row.error} for row in ledger.shards("failed")
        ]
        return {
            **base,
            "state": state,
            "rows_total": total,
            "rows_succeeded": summary.rows_succeeded,
            "rows_failed": summary.rows_failed,
            "shards_total": summary.shards_total,
            "shards_committed": summary.shards_committed,
            "shards_failed": summary.shards_failed,
            "runs": len(runs),
            "last_run": (
                {k: getattr(last, k) for k in ("run_id", "state", "host", "pid", "started_at", "ended_at", "message")}
                if last
                else None
            ),
            "holder": (
                {k: getattr(holder, k) for k in ("host", "pid", "acquired_at", "heartbeat_at")}
                if live and holder
                else None
            ),
            "failed_shards": failed,
            "damaged_parts": [p.describe() for p in damaged],
            "input_changes": _input_changes(spec, ledger),
            "accelerate": described(json.loads(raw) for raw in ledger.shard_stats() if raw),
        }
    finally:
        ledger.close()


def _input_changes(spec: JobSpec, ledger: Any) -> list[str]:
    """What the source says changed in the input of committed shards since they committed (a SQL table's
    rows inserted into a committed key range); a line saying so when it cannot tell now. Only a format
    registered with ``committed_drift`` is asked (and imported): files need not be, a changed file changes
    the input's listing, which the next run acts on."""
    from .. import registry
    from ..errors import InfermillError

    try:
        fmt = spec.input_format()
    except InfermillError:
        return []  # a folder of files
    plugin = registry.find("sources", fmt)
    if plugin is None or not plugin.meta.get("committed_drift"):
        return []
    try:
        from ..sources import source_class
        from ..sources.base import Shard

        committed = [
            (Shard.from_json(row.descriptor), (row.rows_out or 0) + row.rows_failed)
            for row in ledger.shards("committed")
        ]
        return source_class(fmt)(spec).committed_drift(committed) if committed else []
    except InfermillError as exc:
        return [f"cannot check the input for changes: {exc.message}"]
