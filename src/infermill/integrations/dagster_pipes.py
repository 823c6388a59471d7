"""Dagster Pipes, the launched side: ``infermill run`` reporting to the Dagster run that started it.

When Dagster's ``PipesSubprocessClient`` (or any Pipes client) launches ``infermill run``, it sets
``DAGSTER_PIPES_CONTEXT`` and ``DAGSTER_PIPES_MESSAGES``; ``run`` then reports through Pipes (also forced by
``--dagster-pipes``): progress as log lines (the run's start, each committed shard, its end), the
materialization with the run summary as metadata (rows, dead letters by class, manifest, output), the error
budget as the asset check ``error_budget``, and the whole summary as a custom message, so the orchestrating
side (``infermill.integrations.dagster.run_pipes``) can turn exit 75 into a retry request.

Only ``dagster-pipes`` is needed here (a small package without dependencies), imported when a run is
launched by Pipes, never at ``import infermill``. The metadata and the budget check are computed here from
the summary alone (plain dicts), so ``infermill.integrations.dagster`` attaches exactly the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CHECK_NAME",
    "CUSTOM_KEY",
    "PIPES_ENV",
    "budget_check",
    "launched_by_pipes",
    "materialization_metadata",
    "pipes_session",
    "require_dagster_pipes",
]

PIPES_ENV = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")
"""Set by a Dagster Pipes client for the process it launches."""
CHECK_NAME = "error_budget"
"""The asset check that reports the job's ``[errors]`` budget."""
CUSTOM_KEY = "infermill_summary"
"""The key of the custom Pipes message that carries the run summary."""


def launched_by_pipes(flag: bool = False) -> bool:
    """Whether this run reports through Pipes: ``--dagster-pipes`` or both Pipes variables set."""
    return flag or all(os.environ.get(name) for name in PIPES_ENV)


def materialization_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The asset's materialization metadata from a run summary (docs/scheduling.md, "Run summary"): plain
    values, except paths, tagged as Pipes metadata (``{"raw_value": ..., "type": ...}``) where the type
    matters; ``infermill.integrations.dagster`` turns the same dict into Dagster metadata values."""
    dead = {str(k): int(v) for k, v in (summary.get("dead_letters") or {}).items()}
    meta: dict[str, Any] = {
        "state": summary.get("state"),
        "rows_total": summary.get("rows_total"),
        "rows_succeeded": summary.get("rows_succeeded", 0),
        "rows_failed": summary.get("rows_failed", 0),
        "rows_this_run": summary.get("rows_this_run", 0),
        "shards_committed": summary.get("shards_committed", 0),
        "shards_total": summary.get("shards_total", 0),
        "dead_letters_total": sum(dead.values()),
        "dead_letters": {"raw_value": dead, "type": "json"},
        "output": {"raw_value": summary.get("output"), "type": "path"},
        "manifest": {"raw_value": summary.get("manifest"), "type": "path"},
        "ledger": summary.get("ledger"),
        "run_id": summary.get("run_id"),
        "seconds": summary.get("seconds"),
    }
    for name, count in dead.items():
        meta[f"dead_letters/{name}"] = count
    # Pipes metadata has no "null": a key without a value (a job that never started) is left out.
    return {k: v for k, v in meta.items() if v is not None and not (isinstance(v, dict) and v["raw_value"] is None)}


def budget_check(summary: dict[str, Any], max_failed_rows: int | None, max_failed_fraction: float | None,
                 ) -> tuple[bool, dict[str, Any]]:
    """Whether the run kept within the job's ``[errors]`` budget, and the numbers, from its summary (the
    same rule as the engine: more failed rows than ``max_failed_rows``, or a larger share than
    ``max_failed_fraction``, is over). With no budget set, a job passes unless every row failed."""
    failed = int(summary.get("rows_failed") or 0)
    succeeded = int(summary.get("rows_succeeded") or 0)
    total = int(summary.get("rows_total") or succeeded + failed)
    passed = True
    if max_failed_rows is not None and failed > max_failed_rows:
        passed = False
    if max_failed_fraction is not None and total and failed > max_failed_fraction * total:
        passed = False
    if max_failed_rows is None and max_failed_fraction is None and failed and not succeeded:
        passed = False
    meta: dict[str, Any] = {"rows_failed": failed, "rows_total": total,
                            "failed_fraction": round(failed / total, 6) if total else 0.0}
    if max_failed_rows is not None:
        meta["max_failed_rows"] = max_failed_rows
    if max_failed_fraction is not None:
        meta["max_failed_fraction"] = max_failed_fraction
    return passed, meta


def budget_of(job: str, params: dict[str, str] | None = None) -> tuple[int | None, float | None]:
    """The job's ``[errors]`` budget (``None, None`` when the job file cannot be read: the run says why)."""
    from ..errors import InfermillError
    from ..spec import load_spec

    try:
        spec = load_spec(job, params=params or None)
    except InfermillError:
        return None, None
    return spec.errors.max_failed_rows, spec.errors.max_failed_fraction


class _Reporter:
    """An engine subscriber (``infermill.engine.events``) that logs the run's progress through Pipes."""

    def __init__(self, pipes: Any) -> None:
        self.pipes = pipes
        self.rows = 0

    def on_event(self, event: Any) -> None:
        from ..engine.events import RunEnded, RunStarted, ShardCommitted

        if isinstance(event, RunStarted):
            self.pipes.log.info(
                f"infermill: run {event.run_id} of {event.job}: {event.shards_pending} of "
                f"{event.shards_total} shards to score")
        elif isinstance(event, ShardCommitted):
            self.rows += event.rows_succeeded + event.rows_failed
            self.pipes.log.info(
                f"infermill: shard {event.shard_id} committed ({event.rows_succeeded} rows scored, "
                f"{event.rows_failed} dead-lettered; {self.rows} rows this run)")
        elif isinstance(event, RunEnded):
            self.pipes.log.info(f"infermill: run {event.run_id} {event.state}: {event.message}")


class PipesSession:
    """What ``run`` needs while Pipes is open: a subscriber for progress, and ``report`` for the end."""

    def __init__(self, pipes: Any, job: str, params: dict[str, str]) -> None:
        self.pipes = pipes
        self.job = job
        self.params = params
        self.subscriber = _Reporter(pipes)

    def report(self, summary: dict[str, Any]) -> None:
        """Report how the run ended: the summary as a custom message always; on success the
        materialization and the budget check; on exit 1 the failed budget check when that is the cause."""
        self.pipes.report_custom_message({CUSTOM_KEY: summary})
        passed, check_meta = budget_check(summary, *budget_of(self.job, self.params))
        if summary.get("success"):
            self.pipes.report_asset_materialization(metadata=materialization_metadata(summary))
            self.pipes.report_asset_check(CHECK_NAME, passed=passed, metadata=check_meta)
        elif not passed and summary.get("state") == "failed":
            self.pipes.report_asset_check(CHECK_NAME, passed=False, metadata=check_meta)
        if not summary.get("success"):
            self.pipes.log.warning(
                f"infermill: run ended {summary.get('state')} (exit {summary.get('exit_code')}): "
                f"{summary.get('message')}" + ("; safe to retry, the rerun resumes" if summary.get("retry") else ""))


def require_dagster_pipes() -> None:
    """Raise ``SpecError`` (exit 2) with a hint when the ``dagster-pipes`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("dagster_pipes") is None:
        from ..errors import SpecError

        raise SpecError(
            "infermill run was launched by Dagster Pipes (or given --dagster-pipes), but the dagster-pipes "
            "package is not installed",
            hint="pip install 'infermill[dagster-pipes]' where infermill runs, or run without --dagster-pipes",
        )


@contextmanager
def pipes_session(job: str, params: dict[str, str]) -> Iterator[PipesSession]:
    """Open Pipes for one ``infermill run`` (``dagster-pipes`` must be installed: ``require_dagster_pipes``)."""
    require_dagster_pipes()
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield PipesSession(pipes, job, params)
