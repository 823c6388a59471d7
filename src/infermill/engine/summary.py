"""The run summary: one JSON object that says how a run ended, for the program that started it.

``infermill run JOB --summary-json PATH`` writes it whatever the outcome (complete, failed, invalid job,
job locked, interrupted), atomically (a temporary file in the same folder, fsynced, then renamed), so a
reader never sees half of one. ``infermill serve`` reads it to record each scheduled run; orchestrator
integrations attach it to their task. Its keys are listed in docs/scheduling.md ("Run summary"); new keys
may be added, existing ones keep their meaning (``version`` says which).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

from ..errors import EXIT_COMPLETE, EXIT_FAILED, InfermillError, outcome_of

__all__ = ["LOGICAL_DATE_ENV", "SUMMARY_VERSION", "TRIGGER_ENV", "exit_code_of", "run_summary", "write_summary"]

SUMMARY_VERSION = 1


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def run_summary(
    job: str,
    *,
    result: Any = None,
    error: BaseException | None = None,
    exit_code: int,
    started_at: float,
    ended_at: float,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The summary of one ``infermill run`` of ``job`` (a job file): from its RunResult when it completed,
    else from the error it ended with and what the job's ledger holds now."""
    outcome = outcome_of(exit_code)
    data: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "job_file": job,
        "job": None,
        "state": outcome.state,
        "exit_code": exit_code,
        "success": outcome.success,
        "retry": outcome.retry,
        "message": None,
        "error": None,
        "rows_total": None,
        "rows_succeeded": 0,
        "rows_failed": 0,
        "rows_this_run": 0,
        "shards_total": 0,
        "shards_committed": 0,
        "shards_failed": 0,
        "dead_letters": {},
        "output": None,
        "manifest": None,
        "ledger": None,
        "started_at": _iso(started_at),
        "ended_at": _iso(ended_at),
        "seconds": round(ended_at - started_at, 3),
        "cost": None,
        "params": dict(params or {}),
        "trigger": _trigger_from_env(),
        "run_id": None,
    }
    if error is not None:
        data["message"] = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        data["error"] = {
            "class": type(error).__name__,
            "message": data["message"],
            "hint": getattr(error, "hint", None),
        }
    if result is not None:
        data.update(
            job=result.job, message=result.message, rows_total=result.rows_total,
            rows_succeeded=result.rows_succeeded, rows_failed=result.rows_failed,
            rows_this_run=result.rows_this_run, shards_total=result.shards_total,
            shards_committed=result.shards_committed, output=result.output_path, manifest=result.manifest_path,
            ledger=result.ledger_path,
        )
    _add_ledger_view(data, job, counts=result is None, started_at=started_at, params=params)
    return data


TRIGGER_ENV = "INFERMILL_TRIGGER"
"""Set by ``infermill serve`` for the runs it starts: the trigger's key."""
LOGICAL_DATE_ENV = "INFERMILL_LOGICAL_DATE"
"""Set by ``infermill serve`` for the runs it starts: the run's logical date (``YYYY-MM-DD``)."""


def _trigger_from_env() -> dict[str, str] | None:
    key = os.environ.get(TRIGGER_ENV)
    if not key:
        return None
    return {"key": key, "logical_date": os.environ.get(LOGICAL_DATE_ENV, "")}


def _add_ledger_view(
    data: dict[str, Any], job: str, *, counts: bool, started_at: float, params: dict[str, str] | None = None
) -> None:
    """Fill in what the job's ledger says (counts after a failure, dead letters by class). A job file that
    cannot be read, or a ledger that cannot be opened, leaves these keys at their defaults: the summary
    must be written even then."""
    from ..spec import load_spec
    from .lease import connect, has_ledger

    try:
        spec = load_spec(job, params=params or None)
    except InfermillError:
        return
    data["job"] = data["job"] or spec.name
    try:
        if not has_ledger(spec):
            return
        if counts:
            from .runner import status

            info = status(spec)
            for key in ("rows_total", "rows_succeeded", "rows_failed", "shards_total", "shards_committed",
                        "shards_failed"):
                data[key] = info[key]
            data["output"], data["ledger"] = info["output"], info["ledger"]
        ledger = connect(spec)
        try:
            data["dead_letters"] = {g.error_class: data["dead_letters"].get(g.error_class, 0) + g.count
                                    for g in ledger.failure_groups()}
            # This run's ledger run, if it started one ("nothing to do" does not): the run of this process.
            mine = [r for r in ledger.runs() if r.pid == os.getpid() and r.started_at >= started_at - 1]
            data["run_id"] = mine[-1].run_id if mine else None
            data["shards_failed"] = ledger.summary().shards_failed
        finally:
            ledger.close()
    except InfermillError:
        return


def write_summary(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a reader sees the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".summary-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def exit_code_of(error: BaseException) -> int:
    """The exit code ``infermill`` ends with for ``error`` (see ``infermill.errors``)."""
    if isinstance(error, InfermillError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        from ..errors import EXIT_INTERRUPTED

        return EXIT_INTERRUPTED
    return EXIT_FAILED if error is not None else EXIT_COMPLETE
