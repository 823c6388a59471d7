"""``infermill runs JOB``: the job's runs, each with what started it (a cron due time, new files, a person),
from its ledger: the ledger's runs joined with ``serve``'s triggers."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..spec import JobSpec

__all__ = ["RunEntry", "runs"]


@dataclass(frozen=True)
class RunEntry:
    """One run of the job, or one trigger whose attempts started no ledger run (nothing to do, the job
    locked, an invalid job file)."""

    run_id: int | None
    state: str
    trigger: str
    """``manual`` (``infermill run``/``retry`` typed by someone), or the trigger's key
    (``cron:<due time UTC>``, ``files:<digest>``)."""
    trigger_kind: str
    logical_date: str | None
    started_at: float | None
    ended_at: float | None
    rows_done: int
    """Rows this run committed (scored or dead-lettered)."""
    rows_succeeded: int | None
    """The job's totals when the run ended (from its summary; None when unknown)."""
    rows_failed: int | None
    exit_code: int | None
    attempts: int
    message: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs(job: JobSpec | str | os.PathLike[str]) -> list[RunEntry]:
    """The job's runs, oldest first (empty for a job that never ran)."""
    from ..engine.lease import as_spec, connect, has_ledger

    spec = as_spec(job)
    if not has_ledger(spec):
        return []
    ledger = connect(spec)
    try:
        ledger_runs = ledger.runs()
        triggers = [t for t in ledger.triggers() if t.kind != "skipped"]
    finally:
        ledger.close()
    by_run = {run_id: t for t in triggers for run_id in t.run_ids}
    entries: list[RunEntry] = []
    for r in ledger_runs:
        t = by_run.get(r.run_id)
        summary = json.loads(t.summary) if t is not None and t.summary and r.run_id == t.run_ids[-1] else {}
        state = r.state
        if state == "running" and t is not None and t.state not in ("running", "pending"):
            state = t.state  # its process died (killed): the ledger learns it when the lease is next taken
        entries.append(RunEntry(
            run_id=r.run_id, state=state, trigger=t.key if t else "manual", trigger_kind=t.kind if t else "manual",
            logical_date=t.logical_date if t else None, started_at=r.started_at, ended_at=r.ended_at,
            rows_done=r.rows_done, rows_succeeded=summary.get("rows_succeeded"),
            rows_failed=summary.get("rows_failed"),
            exit_code=summary.get("exit_code", t.exit_code if t is not None and r.run_id == t.run_ids[-1] else None),
            attempts=t.attempts if t else 1, message=r.message or (t.message if t is not None else None),
        ))
    for t in triggers:
        if t.run_ids:
            continue
        summary = json.loads(t.summary) if t.summary else {}
        entries.append(RunEntry(
            run_id=None, state=t.state, trigger=t.key, trigger_kind=t.kind, logical_date=t.logical_date,
            started_at=t.created_at, ended_at=t.updated_at if t.exit_code is not None else None, rows_done=0,
            rows_succeeded=summary.get("rows_succeeded"), rows_failed=summary.get("rows_failed"),
            exit_code=t.exit_code, attempts=t.attempts, message=t.message,
        ))
    entries.sort(key=lambda e: (e.started_at or 0.0, e.run_id or 0))
    return entries


def format_time(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
