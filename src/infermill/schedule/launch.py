"""Run one job for ``serve``: ``infermill run JOB --summary-json ...`` as a child process.

A child process, not a call in ``serve``'s own process: a run that crashes, leaks memory or is killed
(the OOM killer) takes only itself down, and ``serve`` reads its outcome through the same exit-code
contract every other caller uses (``infermill.errors.outcome_of``: a child killed by a signal is a
failure, never a success).

The child runs in its own session, so a Ctrl-C at ``serve``'s terminal reaches ``serve`` alone, which
forwards each SIGTERM/SIGINT it gets to the child: the child drains as ``run`` does (a second signal
stops it at once). On Linux the child also gets SIGTERM if ``serve`` itself dies (``kill -9``), so no run
outlives its ``serve`` unnoticed; it drains, exits 75, and the next ``serve`` resumes its trigger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.summary import LOGICAL_DATE_ENV, TRIGGER_ENV
from ..errors import ExitOutcome, outcome_of

__all__ = ["Launched", "Launcher"]


@dataclass(frozen=True)
class Launched:
    """How one run ended."""

    outcome: ExitOutcome
    summary: dict[str, Any] | None
    """The run's summary (``--summary-json``); None when the child died before writing one."""
    seconds: float
    pid: int
    """The child's process id (the ledger's runs record it)."""


def _takes_date(job_file: str) -> bool:
    """Whether the job's ``[input] path`` has a ``{date}`` placeholder: only then is the logical date passed
    as ``--param date=...`` (a param that fills no placeholder is refused)."""
    import tomllib

    from ..templates import placeholders

    try:
        with open(job_file, "rb") as fh:
            path = tomllib.load(fh).get("input", {}).get("path", "")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return False  # the run itself reports the unreadable job file
    return isinstance(path, str) and "date" in placeholders(path)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send this process SIGTERM when its parent (serve) dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launcher:
    """Starts ``infermill run`` for a trigger and waits for it, forwarding stop requests."""

    def __init__(self, *, env: dict[str, str] | None = None, python: str = sys.executable) -> None:
        """``env``: extra environment for the runs."""
        self.env = dict(env or {})
        self.python = python

    def command(self, job_file: str, summary_path: str, logical_date: str | None) -> list[str]:
        argv = [self.python, "-m", "infermill", "run", job_file, "--summary-json", summary_path, "--progress", "log"]
        if logical_date and _takes_date(job_file):
            argv += ["--param", f"date={logical_date}"]
        return argv

    def run(
        self, job_file: str, *, trigger_key: str, logical_date: str | None, signals: Callable[[], int]
    ) -> Launched:
        """Run the job once; ``signals()`` counts the stop signals ``serve`` received: each new one is
        forwarded to the child as SIGTERM."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="infermill-serve-") as folder:
            summary_path = os.path.join(folder, "summary.json")
            env = {**os.environ, **self.env, TRIGGER_ENV: trigger_key}
            if logical_date:
                env[LOGICAL_DATE_ENV] = logical_date
            proc = subprocess.Popen(
                self.command(job_file, summary_path, logical_date),
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
            forwarded = signals()
            while True:
                try:
                    code = proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if signals() > forwarded:
                    forwarded += 1
                    proc.send_signal(signal.SIGTERM)
            summary = None
            try:
                with open(summary_path, encoding="utf-8") as fh:
                    summary = json.load(fh)
            except (OSError, ValueError):
                summary = None
        return Launched(outcome_of(code), summary, time.monotonic() - started, proc.pid)
