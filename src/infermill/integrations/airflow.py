"""Airflow: ``InfermillOperator`` runs one infermill job as a task; ``InfermillTrigger`` waits on it when
the operator is deferred.

The job runs as ``infermill run JOB --summary-json PATH`` in a child process, never inside the worker's
own process: a run killed by the OOM killer takes only itself down, and its end is read through the same
exit-code contract every caller uses (``infermill.errors.outcome_of``; docs/scheduling.md)::

    0       success: the run summary is the task's return value (XCom ``return_value``)
    75, 3   AirflowException: the task's ``retries`` run it again after ``retry_delay``; the rerun resumes
    1, 2    AirflowFailException: failed without retry (fix the job or the model first)
    killed  AirflowFailException: a run killed by a signal is a failure, never a success

On every outcome the summary (when the run wrote one) is also pushed to XCom under ``infermill_summary``.

Parameters: ``params`` are Airflow's own task params (``{{ params.x }}``, overridden by a triggered run's
conf); the ones that name a placeholder of the job's ``[input] path`` are rendered (Jinja: ``"{{ ds }}"``)
and passed as ``--param NAME=VALUE``, the others are left to Airflow. A path with ``{date}`` and no
``date`` param gets the run's logical date (``ds``).

Deferrable mode (``deferrable=True``): the task starts the run as a detached process and defers to
``InfermillTrigger``, which frees the worker slot and polls the job's ledger (``infermill status``'s view,
``infermill.engine.job_status.status``) and the summary file from the triggerer, then resumes the task to
map the outcome. The summary and the run's log live in ``summary_dir`` (default: a folder under the
system's temporary folder), which the triggerer must be able to read.

This module imports Airflow: it is imported only by DAG files, never by ``import infermill``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import AsyncIterator, Mapping
from typing import Any

try:
    from airflow.exceptions import AirflowException, AirflowFailException
    from airflow.models import BaseOperator
    from airflow.triggers.base import BaseTrigger, TriggerEvent
except ImportError as exc:  # the extra is missing: say how to install it
    raise ImportError(
        f"infermill.integrations.airflow needs Airflow ({exc}): pip install 'infermill[airflow]'"
    ) from exc

from ..engine.summary import LOGICAL_DATE_ENV, TRIGGER_ENV
from ..errors import InfermillError, outcome_of

__all__ = ["SUMMARY_XCOM_KEY", "InfermillOperator", "InfermillTrigger"]

SUMMARY_XCOM_KEY = "infermill_summary"

# A deferred run is started by a short-lived intermediate process, which prints the run's pid and exits:
# the run, in its own session, is nobody's child in the worker (no zombie, nothing left to wait for), and
# outlives the worker process that deferred.
_SPAWN = """\
import os, subprocess, sys
with open(sys.argv[1], "ab") as log:
    run = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
print(run.pid, flush=True)
os._exit(0)
"""


def _placeholders(job: str) -> list[str]:
    """The placeholder names of the job's ``[input] path`` (an unreadable job file has none: the run itself
    reports it, exit 2)."""
    from ..templates import placeholders

    try:
        with open(job, "rb") as fh:
            path = tomllib.load(fh).get("input", {}).get("path", "")
        return placeholders(path) if isinstance(path, str) else []
    except (OSError, tomllib.TOMLDecodeError, AttributeError, InfermillError):
        return []


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None  # not written (yet): it is renamed into place whole, never seen half-written
    return data if isinstance(data, dict) else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send this process SIGTERM when the task's process dies (a worker killed with -9): the
    run drains and exits 75 instead of running on unseen, holding the job's lease against the retry."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)


def _ledger_view(job: str, params: Mapping[str, str]) -> dict[str, Any]:
    """What ``infermill status --json`` says of the job; ``state`` is ``unknown`` when it cannot be read."""
    from ..engine.job_status import status
    from ..spec import load_spec

    try:
        return status(load_spec(job, params=dict(params) or None))
    except InfermillError as exc:
        return {"state": "unknown", "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - a ledger busy for a moment must not end the wait: look again
        return {"state": "unknown", "message": f"{type(exc).__name__}: {exc}"}


def _process_gone(pid: int, host: str) -> bool | None:
    """Whether the run's process has ended: None when it ran on another host (only the ledger can tell)."""
    if host != socket.gethostname():
        return None
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class InfermillTrigger(BaseTrigger):  # type: ignore[misc]
    """Waits, in the triggerer, for a detached ``infermill run`` to end; fires one event with its exit code
    (``returncode``: None when the run was killed before writing its summary) and its summary.

    Each poll reads the summary file (written atomically on every outcome); until it appears, the job's
    ledger says whether the run is still going (its lease held by the run's host and pid). A run whose
    process is gone without a summary was killed: a failure.
    """

    def __init__(
        self, *, job: str, params: Mapping[str, str], summary_path: str, pid: int, host: str,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self.job = job
        self.params = dict(params)
        self.summary_path = summary_path
        self.pid = pid
        self.host = host
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job": self.job, "params": self.params, "summary_path": self.summary_path, "pid": self.pid,
             "host": self.host, "poll_interval": self.poll_interval},
        )

    @property
    def _run_log(self) -> str:
        return os.path.join(os.path.dirname(self.summary_path), "run.log")

    def _ours(self, view: Mapping[str, Any], key: str) -> bool:
        record = view.get(key) or {}
        return bool(record) and record.get("pid") == self.pid and record.get("host") == self.host

    async def run(self) -> AsyncIterator[TriggerEvent]:
        committed = None
        seen_ours = False
        while True:
            summary = _read_summary(self.summary_path)
            if summary is not None:
                yield TriggerEvent({"returncode": int(summary["exit_code"]), "summary": summary, "log": self._run_log})
                return
            view = await asyncio.to_thread(_ledger_view, self.job, self.params)
            holding = self._ours(view, "holder")
            seen_ours = seen_ours or self._ours(view, "last_run")
            gone = _process_gone(self.pid, self.host)
            if gone is None:  # another host: the ledger says it, once our run has left its mark there
                gone = seen_ours and not holding
            if gone and not holding:
                summary = _read_summary(self.summary_path)  # it may have landed since the first read
                code = int(summary["exit_code"]) if summary else None
                yield TriggerEvent({"returncode": code, "summary": summary, "log": self._run_log})
                return
            if view.get("shards_committed") != committed:
                committed = view.get("shards_committed")
                self.log.info("infermill job %s: %s, %s of %s shards committed", self.job, view.get("state"),
                              committed, view.get("shards_total"))
            await asyncio.sleep(self.poll_interval)


class InfermillOperator(BaseOperator):  # type: ignore[misc]
    """Run the infermill job file ``job`` as one Airflow task (see the module docstring for the outcome
    mapping and ``params``).

    >>> InfermillOperator(task_id="score", job="/jobs/nightly.toml", retries=3)  # doctest: +SKIP
    """

    template_fields = ("job", "summary_dir")
    ui_color = "#d8e9c6"

    def __init__(
        self, *, job: str, deferrable: bool | None = None, poll_interval: float = 5.0, summary_dir: str | None = None,
        python: str = sys.executable, env: Mapping[str, str] | None = None, **kwargs: Any,
    ) -> None:
        """``job``: the job file (templated). ``deferrable``: wait in the triggerer instead of a worker slot
        (default: Airflow's ``[operators] default_deferrable``).
        ``poll_interval``: seconds between the trigger's looks at the ledger. ``summary_dir``: where a
        deferred run's summary and log go (must be readable by the triggerer). ``python``: the interpreter
        that has infermill installed. ``env``: extra environment for the run."""
        super().__init__(**kwargs)
        self.job = job
        if deferrable is None:
            from airflow.configuration import conf

            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = bool(deferrable)
        self.poll_interval = poll_interval
        self.summary_dir = summary_dir
        self.python = python
        self.env = dict(env or {})
        self._proc: subprocess.Popen[str] | None = None

    # -- what to run
    def job_params(self, context: Mapping[str, Any]) -> dict[str, str]:
        """The ``--param`` values: the task's params that name a placeholder of the job's path, rendered;
        the logical date for ``{date}`` when no param gives it."""
        given = context.get("params") or {}
        chosen: dict[str, str] = {}
        for name in _placeholders(self.job):
            if name in given and given[name] is not None:
                chosen[name] = str(self.render_template(given[name], context))
            elif name == "date":
                chosen[name] = str(context["ds"])
        return chosen

    def _command(self, summary_path: str, params: Mapping[str, str]) -> list[str]:
        argv = [self.python, "-m", "infermill", "run", self.job, "--summary-json", summary_path, "--progress", "log"]
        for name, value in params.items():
            argv += ["--param", f"{name}={value}"]
        return argv

    def _env(self, context: Mapping[str, Any]) -> dict[str, str]:
        ti = context["ti"]
        return {
            **os.environ,
            **self.env,
            TRIGGER_ENV: f"airflow:{ti.dag_id}/{ti.task_id}/{ti.run_id}/{ti.try_number}",
            LOGICAL_DATE_ENV: str(context["ds"]),
        }

    # -- running it
    def execute(self, context: Any) -> dict[str, Any] | None:
        params = self.job_params(context)
        if self.deferrable:
            self._start_detached(context, params)
            return None  # not reached: defer() raises
        with tempfile.TemporaryDirectory(prefix="infermill-airflow-") as folder:
            summary_path = os.path.join(folder, "summary.json")
            # Its own session: Airflow's SIGTERM to the task's process group must not reach the run twice
            # (a second signal stops it at once); on_kill forwards one, and the run drains.
            self._proc = subprocess.Popen(
                self._command(summary_path, params), env=self._env(context), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
            assert self._proc.stdout is not None
            with self._proc.stdout:
                for line in self._proc.stdout:
                    self.log.info("%s", line.rstrip())
            code = self._proc.wait()
            summary = _read_summary(summary_path)
        return self._finish(context, code, summary)

    def on_kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # the run drains and exits 75: the retry resumes it

    def _start_detached(self, context: Mapping[str, Any], params: Mapping[str, str]) -> None:
        ti = context["ti"]
        folder = os.path.join(
            self.summary_dir or os.path.join(tempfile.gettempdir(), "infermill-airflow"),
            _safe(ti.dag_id), _safe(ti.run_id), f"{_safe(ti.task_id)}.{ti.try_number}",
        )
        os.makedirs(folder, exist_ok=True)
        summary_path = os.path.join(folder, "summary.json")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(summary_path)  # a leftover of an earlier attempt must not end this one
        log = os.path.join(folder, "run.log")
        started = subprocess.run(
            [self.python, "-c", _SPAWN, log, *self._command(summary_path, params)],
            env=self._env(context), capture_output=True, text=True, check=False,
        )
        if started.returncode != 0:
            raise AirflowException(f"could not start infermill run of {self.job}: {started.stderr.strip()}")
        pid = int(started.stdout.strip())
        self.log.info("infermill run of %s started (pid %d, log %s); deferring until it ends", self.job, pid, log)
        self.defer(
            trigger=InfermillTrigger(job=self.job, params=params, summary_path=summary_path, pid=pid,
                                     host=socket.gethostname(), poll_interval=self.poll_interval),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        """Resumed by the trigger's event: map the run's outcome as ``execute`` does."""
        log = event.get("log")
        if log:  # the run's own output, into the task's log as a synchronous run's is
            with contextlib.suppress(OSError), open(log, encoding="utf-8", errors="replace") as fh:
                for line in fh.readlines()[-200:]:
                    self.log.info("%s", line.rstrip())
        code = event.get("returncode")
        return self._finish(context, None if code is None else int(code), event.get("summary"))

    def _finish(self, context: Any, code: int | None, summary: dict[str, Any] | None) -> dict[str, Any] | None:
        """Map the run's end: ``code`` as ``subprocess`` reports it, None for a detached run that ended
        without a summary (killed: which signal, only its parent knew)."""
        if summary is not None:
            context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=summary)
        outcome = outcome_of(-int(signal.SIGKILL) if code is None else code)
        if outcome.success:
            return summary
        what = f"infermill run {self.job}: {outcome.state} (exit {'unknown' if code is None else code})"
        if summary and summary.get("message"):
            what += f": {summary['message']}"
        elif outcome.code < 0:
            what += ": killed by a signal before it could finish; committed shards are kept"
        if outcome.retry:
            raise AirflowException(f"{what}; safe to retry: the task's retries rerun it and it resumes")
        raise AirflowFailException(what)
