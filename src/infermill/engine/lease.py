"""Holding a job's lease: the one sequence ``run`` and ``retry`` both use.

::

    with holding(spec, wait=False) as held:      # open the ledger, take the lease, start the heartbeat
        ... held.ledger, held.lease, held.heartbeat.lost ...
                                                 # stop the heartbeat, release the lease, close the ledger

The heartbeat refreshes the lease from its own thread and connection and sets ``lost`` when another run
took the lease over (this run is then fenced out: the ledger refuses its commits).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InfermillError, JobLockedError, LedgerError
from ..ledger import Lease, Ledger, ledger_exists
from ..ledger import open_ledger as _open_location
from ..ledger.sqlite import move_aside
from ..spec import JobSpec, load_spec

__all__ = ["Heartbeat", "Held", "as_spec", "connect", "has_ledger", "holding", "open_ledger"]


def as_spec(job: JobSpec | str | os.PathLike[str]) -> JobSpec:
    """A JobSpec as given, or loaded from a job file."""
    return job if isinstance(job, JobSpec) else load_spec(job)


class Heartbeat:
    """Keeps the lease fresh from its own thread and connection; notices a takeover."""

    def __init__(self, connect: Callable[[], Ledger], lease: Lease, interval: float) -> None:
        """``connect`` opens the same ledger again (same backend), for this thread's own connection."""
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._connect = connect
        self._lease = lease
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="infermill-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ledger = self._connect()
        try:
            while not self._stop.wait(self._interval):
                try:
                    if not ledger.heartbeat(self._lease):
                        self.lost.set()
                        return
                except InfermillError:
                    continue
        finally:
            ledger.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def connect(spec: JobSpec) -> Ledger:
    """The job's ledger (SQLite file or PostgreSQL database, from ``[runtime] ledger``)."""
    return _open_location(spec.ledger_path(), job=spec.name)


def has_ledger(spec: JobSpec) -> bool:
    """Whether the job has a ledger yet (nothing is created to find out)."""
    return ledger_exists(spec.ledger_path(), spec.name)


def open_ledger(spec: JobSpec, *, restart: bool = False, quiet: bool = False) -> Ledger:
    """The job's ledger. With ``restart``, an SQLite ledger that cannot be opened (damaged, not a database)
    is moved aside, kept with a timestamp, and a new one is started."""
    try:
        return connect(spec)
    except LedgerError:
        if not restart or not os.path.isfile(spec.ledger_path()):
            raise
    kept = move_aside(spec.ledger_path())
    if not quiet:
        print(f"[{spec.name}] warning: the ledger could not be opened; moved it aside to {kept}", file=sys.stderr)
    return connect(spec)


def _acquire(ledger: Ledger, spec: JobSpec, wait: bool) -> Lease:
    while True:
        try:
            return ledger.acquire_lease(lease_seconds=spec.runtime.lease_seconds, job=spec.name)
        except JobLockedError:
            if not wait:
                raise
            time.sleep(min(1.0, spec.runtime.lease_seconds / 10))


@dataclass(frozen=True)
class Held:
    """What a holder of the lease works with."""

    ledger: Ledger
    lease: Lease
    heartbeat: Heartbeat


@contextmanager
def holding(spec: JobSpec, *, wait: bool = False, restart: bool = False, quiet: bool = False) -> Iterator[Held]:
    """Open the job's ledger, take its lease (or wait for it with ``wait``; JobLockedError otherwise) and
    keep it fresh; on the way out stop the heartbeat, release the lease and close the ledger."""
    ledger = open_ledger(spec, restart=restart, quiet=quiet)
    try:
        lease = _acquire(ledger, spec, wait)
        heartbeat = Heartbeat(lambda: connect(spec), lease, max(0.5, spec.runtime.lease_seconds / 3))
        try:
            yield Held(ledger, lease, heartbeat)
        finally:
            heartbeat.stop()
            ledger.release_lease(lease)
    finally:
        ledger.close()
