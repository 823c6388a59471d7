"""Prefect: run an infermill job as a Prefect task, retried exactly when the exit-code contract says so.

::

    from prefect import flow
    from infermill.integrations.prefect import infermill_task

    @flow
    def nightly() -> dict:
        return infermill_task("jobs/nightly.toml", params={"region": "eu"})

The task runs ``infermill run JOB --summary-json ...`` as a child process (a crash or the OOM killer takes
down only the child, and a child killed by a signal is seen as one: a failure, never a success) and maps
its exit code as every caller does (``infermill.errors.outcome_of``):

- 0: the task completes; its result is the run summary (docs/scheduling.md), also published as a table
  artifact (``infermill-<job name>``).
- 75 (interrupted, transient) and 3 (another run holds the job): the task raises
  :class:`InfermillRunFailed` and its ``retry_condition_fn`` lets Prefect retry it after
  ``retry_delay_seconds``: the rerun resumes, committed shards are kept.
- 1 (failed), 2 (invalid job or input), a signal: :class:`InfermillRunFailed`, not retried.

``infermill_flow(job, params)`` is a ready flow around the task; it passes the flow run's scheduled date
as ``--param date=...`` when the job's ``[input] path`` has a ``{date}`` placeholder, so a scheduled (or
backfilled) run reads its own day's partition.

Prefect is imported here, never at ``import infermill`` time: ``pip install 'infermill[prefect]'``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InfermillError, outcome_of

try:
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_table_artifact
except ImportError as exc:  # pragma: no cover - the main test environment has no Prefect
    raise ImportError(
        f"infermill.integrations.prefect needs Prefect ({exc}): pip install 'infermill[prefect]'"
    ) from exc

__all__ = ["InfermillRunFailed", "infermill_command", "infermill_flow", "infermill_task", "retry_condition"]

DEFAULT_RETRIES = 3
"""Retries of the task for exit 75 and 3 (each reruns the same command, which resumes)."""
DEFAULT_RETRY_DELAY_SECONDS = 30
"""The wait before a retry: a lock held by another run, a server that did not answer, need time."""
STOP_GRACE_SECONDS = 60.0
"""When the task itself is stopped (a Prefect timeout or cancellation reaching the task's thread), the
child gets SIGTERM and this long to drain (finish in-flight shards, exit 75) before SIGKILL."""


class InfermillRunFailed(InfermillError):
    """``infermill run`` did not complete the job. ``retry`` says whether rerunning it (after a wait) is safe
    and resumes (exit 75 and 3); ``summary`` is the run summary (None when the process died before writing
    one: killed by a signal)."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int,
        summary: dict[str, Any] | None = None,
        hint: str | None = None,
        job: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, job=job)
        outcome = outcome_of(returncode)
        self.returncode = returncode
        self.state = outcome.state
        self.retry = outcome.retry
        self.summary = summary
        # The exit code this error stands for, so code that reads InfermillError.exit_code sees the child's.
        self.exit_code = returncode if returncode >= 0 else 1

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a task's exception (result persistence, a task run in another process).
        return (_rebuild_failed, (self.message, self.returncode, self.summary, self.hint, self.job))


def _rebuild_failed(
    message: str, returncode: int, summary: dict[str, Any] | None, hint: str | None, job: str | None
) -> InfermillRunFailed:
    return InfermillRunFailed(message, returncode=returncode, summary=summary, hint=hint, job=job)


def _date_placeholder_and_timezone(job: str) -> tuple[bool, str]:
    """Whether the job's ``[input] path`` has a ``{date}`` placeholder (a ``date`` param that fills none is
    refused), and the job's ``[runtime] timezone`` (its "today")."""
    from ..templates import DEFAULT_TIMEZONE, placeholders

    try:
        with open(job, "rb") as fh:
            data = tomllib.load(fh)
        path = data.get("input", {}).get("path", "")
        timezone = data.get("runtime", {}).get("timezone", DEFAULT_TIMEZONE)
        takes = isinstance(path, str) and "date" in placeholders(path)
    except (OSError, tomllib.TOMLDecodeError, AttributeError, InfermillError):
        return False, DEFAULT_TIMEZONE  # the run itself reports the unreadable job file
    return takes, timezone if isinstance(timezone, str) else DEFAULT_TIMEZONE


def _logical_date(job: str, when: dt.date | dt.datetime | str | None) -> str | None:
    """``when`` as the ``date`` param the job takes (``YYYY-MM-DD`` in the job's timezone), or None when
    there is none or the job's path has no ``{date}``."""
    if when is None:
        return None
    takes, timezone = _date_placeholder_and_timezone(job)
    if not takes:
        return None
    if isinstance(when, str):
        return when
    if isinstance(when, dt.datetime):
        if when.tzinfo is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            # A bad timezone is the run's to report; the date as given is as good as any here.
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
                when = when.astimezone(ZoneInfo(timezone))
        return when.date().isoformat()
    return when.isoformat()


def infermill_command(
    job: str,
    summary_path: str,
    params: Mapping[str, str] | None = None,
    *,
    command: Sequence[str] | None = None,
) -> list[str]:
    """The ``infermill run`` command line the task runs.

    ``command``: how to start infermill, default ``[sys.executable, "-m", "infermill"]`` (the task's own
    Python); e.g. ``["/opt/infermill/.venv/bin/infermill"]`` when infermill lives in another environment.

    >>> infermill_command("job.toml", "s.json", {"date": "2026-12-01"}, command=["infermill"])[1:]
    ['run', 'job.toml', '--summary-json', 's.json', '--progress', 'log', '--param', 'date=2026-12-01']
    """
    argv = [*(command or (sys.executable, "-m", "infermill")), "run", job, "--summary-json", summary_path,
            "--progress", "log"]
    for name, value in (params or {}).items():
        argv += ["--param", f"{name}={value}"]
    return argv


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop the child as ``serve`` does: SIGTERM (it drains and exits 75), SIGKILL after the grace."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _forward(stream: Any, logger: Any) -> None:
    """The child's output, line by line, into the task's log."""
    with stream:
        for line in stream:
            logger.info("%s", line.rstrip("\n"))


def _wait(proc: subprocess.Popen[str]) -> int:
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _run(
    job: str, params: Mapping[str, str], command: Sequence[str] | None, env: Mapping[str, str] | None, logger: Any
) -> tuple[int, dict[str, Any] | None]:
    """Run the job once; its output goes to the task's log. Returns the return code and the summary."""
    with tempfile.TemporaryDirectory(prefix="infermill-prefect-") as folder:
        summary_path = os.path.join(folder, "summary.json")
        argv = infermill_command(job, summary_path, params, command=command)
        logger.info("running %s", " ".join(argv))
        proc = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace",
        )
        # The output is forwarded on a thread, and this one waits in short steps: Prefect stops a task (its
        # timeout, a cancellation) by raising in the task's thread, which a blocking read would never see.
        forward = threading.Thread(target=_forward, args=(proc.stdout, logger), name="infermill-log", daemon=True)
        forward.start()
        try:
            code = _wait(proc)
        except BaseException:
            # The task was stopped: the child must not run on unseen. It drains (exit 75) or is killed.
            _stop(proc)
            raise
        finally:
            forward.join(timeout=10)
        try:
            with open(summary_path, encoding="utf-8") as fh:
                summary: dict[str, Any] | None = json.load(fh)
        except (OSError, ValueError):
            summary = None  # killed before it could write one
    return code, summary


def _artifact_key(job: str, summary: Mapping[str, Any] | None) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for the job: ``infermill-<name>``."""
    name = (summary or {}).get("job") or os.path.splitext(os.path.basename(job))[0]
    return "infermill-" + (re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "job")


def _summary_table(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """The summary as rows of (key, value), nested values as JSON: one row per key reads well in the UI."""
    rows = []
    for key in sorted(summary):
        value = summary[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append({"key": key, "value": text})
    return rows


def _publish(job: str, code: int, summary: Mapping[str, Any] | None) -> None:
    if summary is None:
        return
    state = summary.get("state", outcome_of(code).state)
    create_table_artifact(
        table=_summary_table(summary),
        key=_artifact_key(job, summary),
        description=f"infermill run of `{job}`: **{state}** (exit {code})",
    )


def _failure(job: str, code: int, summary: dict[str, Any] | None) -> InfermillRunFailed:
    outcome = outcome_of(code)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        message = f"infermill run {job} was killed by {name}: a failure; committed shards are kept"
    else:
        detail = (summary or {}).get("message") or outcome.state
        message = f"infermill run {job} exited {code} ({outcome.state}): {detail}"
    if outcome.retry:
        hint = "retried by the task; by hand: `infermill run JOB` resumes where it stopped"
    else:
        error = (summary or {}).get("error") or {}
        hint = error.get("hint") or f"see `infermill status {job}` and `infermill failures {job}`"
    return InfermillRunFailed(message, returncode=code, summary=summary, hint=hint, job=job)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only what the contract says is safe to retry (exit 75 and 3).

    A failure that is not an :class:`InfermillRunFailed` (the task's own bug, a missing file) is not
    retried either: rerunning cannot fix it."""
    # The engine hands over Failed(data=<the exception>); reading .data needs no result storage.
    error = getattr(state, "data", None)
    if not isinstance(error, BaseException):
        error = state.result(raise_on_failure=False)
    return isinstance(error, InfermillRunFailed) and error.retry


def _infermill_run(
    job: str,
    params: Mapping[str, str] | None = None,
    logical_date: dt.date | dt.datetime | str | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``infermill run JOB`` once; return its summary, or raise :class:`InfermillRunFailed`.

    ``params``: ``--param`` values for the job's path placeholders; ``logical_date``: passed as
    ``date`` when the job's path has ``{date}`` and ``params`` has none; ``env``: extra environment."""
    merged = dict(params or {})
    if "date" not in merged and (date := _logical_date(job, logical_date)) is not None:
        merged["date"] = date
    code, summary = _run(job, merged, command, env, get_run_logger())
    _publish(job, code, summary)
    if not outcome_of(code).success:
        raise _failure(job, code, summary)
    assert summary is not None  # exit 0 always writes one
    return summary


infermill_task: Any = task(
    _infermill_run,
    name="infermill-run",
    retries=DEFAULT_RETRIES,
    retry_delay_seconds=DEFAULT_RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_condition,
)
"""The Prefect task: ``infermill_task(job, params=None, logical_date=None, command=None, env=None)`` returns
the run summary. Change retries with ``infermill_task.with_options(retries=5, retry_delay_seconds=60)``."""


def _scheduled_date() -> dt.datetime | None:
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    return when if isinstance(when, dt.datetime) else None


def _infermill_flow(
    job: str,
    params: dict[str, str] | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    retries: int = DEFAULT_RETRIES,
    retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS,
    logical_date: str | None = None,
) -> dict[str, Any]:
    """Run one infermill job (retried on exit 75 and 3). Its logical date (``{date}`` in the job's path) is
    ``logical_date`` (``YYYY-MM-DD``, for a backfill) or else the flow run's scheduled date."""
    run = infermill_task.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    result: dict[str, Any] = run(
        job, params=params, logical_date=logical_date or _scheduled_date(), command=command, env=env
    )
    return result


infermill_flow: Any = flow(_infermill_flow, name="infermill")
"""A flow of one ``infermill_task``: ``infermill_flow(job, params)`` runs it here; deploy it with
``infermill_flow.serve(name="nightly", cron="0 2 * * *", parameters={"job": "nightly.toml"})``."""
