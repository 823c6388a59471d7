"""``infermill serve``: run jobs when their ``[schedule]`` says so, on one box, without an orchestrator.

Each tick, for each job::

    cron due times since the last one handled ──┐                        ┌─> run it (a child process:
    the input's listing, new files settled ─────┼─> claim a trigger ────>┤   ``infermill run``), record
    unfinished triggers of a serve that died ───┘   (a ledger row, keyed └─> its outcome on the trigger
                                                     by what fired it)

Exactly once: a trigger's key is derived from what fired it (``cron:<due time>``, ``files:<digest of the
listing>``), and the ledger records a key once (``claim_trigger``), so a restarted ``serve``, or a second
``serve`` on the same jobs, never claims the same work again. Never two runs of one job at once: every
run takes the job's lease (``engine/lease.py``); a run that finds it held exits 3 and its trigger is run
again after ``retry_seconds``. A trigger whose ``serve`` died (its process is gone) is taken over by the
next ``serve`` (compare-and-set on its owner) and run again: the run resumes, nothing is done twice.

The catchup of cron due times counts from the last due time recorded for the job (the first ``serve`` to
see a job records its start as the starting point). Times come from ``clock`` (injectable: tests move a
fake clock instead of waiting for a due time).
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from ..errors import InfermillError, SpecError
from ..ledger import Ledger, TriggerRecord, holder_is_dead, lease_is_live
from ..spec import JobSpec, load_spec
from .cron import Cron, zone
from .launch import Launched, Launcher
from .watch import FolderEvents, watch_root

__all__ = ["CLOCK_FILE_ENV", "Scheduler", "file_clock", "job_files", "serve"]

CLOCK_FILE_ENV = "INFERMILL_CLOCK_FILE"
"""Test hook, like ``INFERMILL_FAULT``: ``serve`` reads the time (epoch seconds) from this file instead of
the system clock, so tests move time forward instead of waiting for a due time. Unset in normal use."""


def file_clock(path: str) -> Callable[[], float]:
    """A clock that reads epoch seconds from ``path`` (written by a test; replace it atomically)."""

    def now() -> float:
        for _ in range(100):
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
            if text:
                return float(text)
            time.sleep(0.01)  # caught between a writer's truncate and its write
        raise ValueError(f"{CLOCK_FILE_ENV} file {path} is empty")

    return now


def job_files(paths: Sequence[str]) -> list[str]:
    """The job files named: files as given, folders by their ``*.toml`` files (sorted)."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(glob.glob(os.path.join(path, "*.toml")))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise SpecError(f"job file not found: {path}", hint="pass job files (TOML) or folders that hold them")
    return found


@dataclass
class _Watch:
    """What ``serve`` keeps in memory about one job between ticks."""

    job_file: str
    seen_digest: str | None = None
    seen_since: float = 0.0
    next_poll: float = 0.0
    not_before: dict[str, float] = field(default_factory=dict)
    """Trigger key -> when it may run again (after exit 3 or 75)."""
    complained: str | None = None
    events: FolderEvents | None = None
    """inotify on a local input folder (None: an object store, or no inotify here: listed every poll)."""
    events_root: str | None = None


def _utc(epoch: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC)


class Scheduler:
    """The jobs ``serve`` watches, and one :meth:`tick` of work. Runs are started one at a time.

    >>> scheduler = Scheduler(["nightly.toml"])     # doctest: +SKIP
    >>> scheduler.tick()                            # runs whatever is due now; returns how many runs
    """

    def __init__(
        self,
        jobs: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        launcher: Launcher | None = None,
        log: Callable[[str], None] | None = None,
        owner: str | None = None,
    ) -> None:
        self.watches = [_Watch(os.path.abspath(j)) for j in jobs]
        self.clock = clock
        self.launcher = launcher or Launcher()
        self.log = log or _log
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.started = clock()
        self.signals = 0
        self._stop = threading.Event()

    # -- stopping ---------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop after the running job (which is told to drain); a second request stops it at once."""
        self.signals += 1
        self._stop.set()

    # -- one tick ---------------------------------------------------------------------------------
    def tick(self) -> int:
        """Claim what is due now for every job and run it; return how many runs were started."""
        started = 0
        for watch in self.watches:
            if self.stopping:
                break
            try:
                started += self._tick_job(watch)
            except Exception as exc:  # noqa: BLE001 - serve outlives one job's trouble (a listing that failed...)
                self.log(f"{watch.job_file}: {type(exc).__name__}: {exc}; trying again next tick")
        return started

    def _tick_job(self, watch: _Watch) -> int:
        try:
            spec = load_spec(watch.job_file)
        except InfermillError as exc:
            self._complain(watch, f"{watch.job_file}: {exc}")
            return 0
        if not spec.schedule.active:
            self._complain(watch, f"{watch.job_file}: no [schedule] cron or on_new_files: nothing to serve")
            return 0
        watch.complained = None
        try:
            with _ledger(spec) as ledger:
                now = self.clock()
                if spec.schedule.cron is not None:
                    self._claim_cron(spec, ledger, now)
                if spec.schedule.on_new_files:
                    self._claim_files(spec, ledger, now, watch)
                todo = self._runnable(spec, ledger, now, watch)
        except InfermillError as exc:
            self.log(f"{spec.name}: {exc}")
            return 0
        runs = 0
        for trigger in todo:
            if self.stopping:
                break
            self._run(spec, watch, trigger)
            runs += 1
        return runs

    def _complain(self, watch: _Watch, text: str) -> None:
        if watch.complained != text:  # once, not every tick
            self.log(text)
            watch.complained = text

    # -- cron -------------------------------------------------------------------------------------
    def _claim_cron(self, spec: JobSpec, ledger: Ledger, now: float) -> None:
        schedule = spec.schedule
        cron, tz = Cron.parse(schedule.cron or ""), zone(schedule.timezone)
        handled = ledger.last_due_at()
        if handled is None:
            # The first serve to see the job: catchup counts from here, never from the beginning of time.
            ledger.claim_trigger("cron-start", kind="skipped", owner=self.owner, due_at=self.started,
                                 state="skipped", detail=json.dumps({"reason": "serve first saw the job"}))
            handled = ledger.last_due_at() or self.started
        due = cron.due_between(_utc(handled), _utc(now), tz)
        if not due:
            return
        if schedule.catchup == "all":
            fire = due
        elif schedule.catchup == "latest":
            fire = due[-1:]
        else:  # none: only a due time that came while this serve was up (the latest of them)
            fire = [d for d in due if d.timestamp() >= self.started][-1:]
        skipped = [d for d in due if d not in fire]
        if skipped:
            last = skipped[-1]
            ledger.claim_trigger(
                f"skipped:{last.astimezone(_dt.UTC).isoformat()}", kind="skipped", owner=self.owner,
                due_at=last.timestamp(), state="skipped", logical_date=last.date().isoformat(),
                detail=json.dumps({"skipped": len(skipped), "catchup": schedule.catchup,
                                   "first": skipped[0].isoformat(), "last": last.isoformat()}),
            )
            self.log(f"{spec.name}: {len(skipped)} due time(s) skipped (catchup = {schedule.catchup!r}), "
                     f"the last {last.isoformat()}")
        for moment in fire:
            key = f"cron:{moment.astimezone(_dt.UTC).isoformat()}"
            if ledger.claim_trigger(key, kind="cron", owner=self.owner, due_at=moment.timestamp(),
                                    logical_date=moment.date().isoformat(),
                                    detail=json.dumps({"cron": schedule.cron, "due": moment.isoformat()})):
                self.log(f"{spec.name}: due at {moment.isoformat()} ({schedule.cron})")

    # -- new files --------------------------------------------------------------------------------
    def _claim_files(self, spec: JobSpec, ledger: Ledger, now: float, watch: _Watch) -> None:
        schedule = spec.schedule
        fired = self._events(spec, watch)
        settled = watch.seen_digest is not None and now - watch.seen_since >= schedule.settle_seconds
        # A local folder's events say when to look (at once); its listing, as an object store's, says what is
        # new. Without an event the input is listed every poll_seconds, and once more when a change settles.
        if now < watch.next_poll and not fired and not settled:
            return
        watch.next_poll = now + schedule.poll_seconds
        listing = _listing(spec)
        last = ledger.triggers("files", newest=1)
        known: set[tuple[str, str]] = set()
        if last:
            known = {(p, f) for p, f in json.loads(last[-1].detail).get("listing", [])}
        new = [entry for entry in listing if entry not in known]
        if not new:
            watch.seen_digest = None
            return
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
        if digest != watch.seen_digest:  # changed since the last look: wait until it settles
            watch.seen_digest, watch.seen_since = digest, now
        if now - watch.seen_since < schedule.settle_seconds:
            return
        tz = zone(schedule.timezone)
        detail = {"digest": digest, "files": len(listing), "new_count": len(new),
                  "new": [p for p, _ in new[:100]], "listing": [list(e) for e in listing]}
        if ledger.claim_trigger(f"files:{digest}", kind="files", owner=self.owner,
                                logical_date=_utc(now).astimezone(tz).date().isoformat(), detail=json.dumps(detail)):
            self.log(f"{spec.name}: {len(new)} new input file(s) settled ({', '.join(p for p, _ in new[:3])}"
                     f"{' ...' if len(new) > 3 else ''})")

    def _events(self, spec: JobSpec, watch: _Watch) -> bool:
        """Whether the job's local input folder had file events since the last look (opening the watch on
        first use, or again when the folder it watches changed)."""
        root = watch_root(spec.resolve(spec.input_template or spec.input.path))
        if root != watch.events_root:
            if watch.events is not None:
                watch.events.close()
            watch.events, watch.events_root = (FolderEvents.open(root) if root else None), root
        return watch.events.changed() if watch.events is not None else False

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early on a stop request or a file event in a watched input folder."""
        fds = [w.events.fileno() for w in self.watches if w.events is not None]
        if not fds:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(fds, [], [], min(left, 0.25))
            if ready:
                return

    # -- what to run ------------------------------------------------------------------------------
    def _runnable(self, spec: JobSpec, ledger: Ledger, now: float, watch: _Watch) -> list[TriggerRecord]:
        todo = []
        for trigger in ledger.triggers(unfinished=True):
            if trigger.owner != self.owner:
                if not self._owner_gone(spec, ledger, trigger):
                    continue
                if not ledger.take_trigger(trigger.key, owner=self.owner, previous=trigger.owner):
                    continue
                self.log(f"{spec.name}: taking over {trigger.key} from {trigger.owner} (gone); it resumes")
            if now < watch.not_before.get(trigger.key, 0.0):
                continue
            todo.append(trigger)
        return todo

    def _owner_gone(self, spec: JobSpec, ledger: Ledger, trigger: TriggerRecord) -> bool:
        host, _, pid = trigger.owner.rpartition(":")
        if host == socket.gethostname():
            return pid.isdigit() and holder_is_dead(host, int(pid))
        # Another machine's serve: gone once the job's lease is free and the trigger has not moved for a
        # lease period (its runs would have kept the lease alive).
        stale = time.time() - trigger.updated_at > spec.runtime.lease_seconds
        return stale and not lease_is_live(ledger.lease_holder(), spec.runtime.lease_seconds)

    # -- running ----------------------------------------------------------------------------------
    def _run(self, spec: JobSpec, watch: _Watch, trigger: TriggerRecord) -> Launched:
        with _ledger(spec) as ledger:
            ledger.update_trigger(trigger.key, state="running", attempt=True)
        self.log(f"{spec.name}: run for {trigger.key} (logical date {trigger.logical_date})")
        launched = self.launcher.run(
            watch.job_file, trigger_key=trigger.key, logical_date=trigger.logical_date, signals=lambda: self.signals
        )
        outcome, summary = launched.outcome, launched.summary or {}
        message = summary.get("message") or (
            f"killed by signal {-outcome.code}" if outcome.code < 0 else f"exit {outcome.code}"
        )
        with _ledger(spec) as ledger:
            run_id = summary.get("run_id")
            if not summary:  # died before writing its summary (killed): find its run by its pid
                mine = [r.run_id for r in ledger.runs() if r.pid == launched.pid and r.host == socket.gethostname()]
                run_id = mine[-1] if mine else None
            ledger.update_trigger(
                trigger.key, state=outcome.state, exit_code=outcome.code, message=message,
                summary=json.dumps(summary) if summary else None, run_id=run_id,
            )
        if outcome.retry:
            watch.not_before[trigger.key] = self.clock() + spec.schedule.retry_seconds
        self.log(
            f"{spec.name}: {trigger.key}: {outcome.state} (exit {outcome.code}) in {launched.seconds:.1f}s: {message}"
            + (f"; runs again in {spec.schedule.retry_seconds:g}s, resuming" if outcome.retry and not self.stopping
               else "")
        )
        return launched


@contextmanager
def _ledger(spec: JobSpec) -> Iterator[Ledger]:
    from ..engine.lease import connect

    ledger = connect(spec)
    try:
        yield ledger
    finally:
        ledger.close()


def _listing(spec: JobSpec) -> list[tuple[str, str]]:
    """The input's files as (path relative to the input root, fingerprint: size and mtime or etag), sorted;
    empty while the input holds no file yet."""
    from ..sources._fs import list_input

    try:
        listing = list_input(spec, spec.input_format())
    except SpecError:  # InputError included: nothing there yet
        return []
    return [(f.relpath, f.fingerprint) for f in listing.files]


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} [serve] {text}", file=sys.stderr, flush=True)


def serve(jobs: Sequence[str], *, poll_seconds: float = 1.0, clock: Callable[[], float] | None = None) -> int:
    """Serve ``jobs`` (job files or folders of them) until SIGTERM or SIGINT; return the exit code (0).

    A signal stops ``serve`` after the running job, which is told to drain as ``infermill run`` does (its
    trigger is resumed by the next ``serve``); a second signal stops the running job at once.
    """
    files = job_files(jobs)
    if not files:
        raise SpecError(f"no job files in {', '.join(jobs)}", hint="pass job files (TOML) or folders that hold them")
    for file in files if len(files) == 1 and not os.path.isdir(jobs[0]) else ():
        if not load_spec(file).schedule.active:
            raise SpecError(
                f"{file} has no [schedule]: serve has nothing to do for it",
                hint='add [schedule] cron = "0 2 * * *" (or on_new_files = true), or run it with `infermill run`',
            )
    if clock is None:
        path = os.environ.get(CLOCK_FILE_ENV)
        clock = file_clock(path) if path else time.time
    scheduler = Scheduler(files, clock=clock)

    def on_signal(signum: int, _frame: Any) -> None:
        scheduler.request_stop()
        with suppress(OSError):
            os.write(2, f"[serve] {signal.Signals(signum).name}: stopping after the running job\n".encode())

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        scheduler.log(f"serving {len(files)} job(s): {', '.join(os.path.basename(f) for f in files)}")
        while not scheduler.stopping:
            scheduler.tick()
            scheduler.wait(poll_seconds)
        scheduler.log("stopped")
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0
