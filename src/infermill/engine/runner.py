"""The coordinator: plans, leases, dispatches shards to workers, commits their files, finishes the job.

Commit protocol for one shard (the only place results become visible)::

    worker: write staged file, fsync, hash  ─>  coordinator: check lease token
        ─> atomic rename to part-NNNNN-a<epoch>  ─>  ledger: shard committed with its file's size and
           checksum (same transaction re-checks the token)

The file name carries the lease epoch, so a run fenced out between its token check and its rename can
only add a file of its own attempt, never replace the part a newer run committed; the ledger refuses its
commit and its file is swept as debris. A crash before the ledger update leaves such a debris file too;
a crash after it loses nothing. Before anything is written the output directory is claimed for this job
(``_infermill.json``). A run first checks that every committed part is still present and intact, and
recomputes the shards of those that are not. The manifest is written once every shard is committed and
the debris is gone, so it lists exactly the part files on disk.

Incremental runs: when only the input changed since the job last ran, the run does not refuse (as it does
for a changed spec or model) but brings the plan up to date (``_update_plan``): it reports what changed,
removes the manifest, then in one ledger transaction forgets the shards of changed and deleted input and
adds pending shards for new and changed input. The parts of the forgotten shards are then debris, swept
like any other, and the manifest written at the end lists the whole current output again. A source whose
stored plan stays valid while it grows (``Source.grows_in_place``: a SQL table's key ranges) is asked for
its delta on every run, since its listing does not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import (
    EXIT_COMPLETE,
    EXIT_INTERRUPTED,
    InfermillError,
    InterruptedRunError,
    JobChangedError,
    JobFailedError,
    LeaseLostError,
    OutputConflictError,
)
from ..ledger import (
    Lease,
    Ledger,
    PartCheck,
    display_location,
)
from ..models import load_adapter
from ..observe.estimate import RowEstimate, sample_rows_per_byte
from ..observe.progress import Mode, ProgressReporter, plural
from ..sinks import CommittedFile, OwnerRecord, Sink, StagedFile, open_sink
from ..sources import open_source
from ..sources.base import InputDelta, Shard
from ..spec import JobSpec
from .autosize import resolve_batch_size
from .columns import resolve_columns
from .events import (
    InputChanged,
    Progress,
    RunEnded,
    RunStarted,
    ShardCommitted,
    ShardFailed,
    ShardStaged,
    ShardStarted,
    Subscriber,
    Subscribers,
    WorkerExited,
    WorkerFatal,
)
from .executor import make_executor, threads_per_worker
from .faults import fault_point
from .job_status import rows_total as _rows_total
from .job_status import status
from .lease import Held, as_spec, holding
from .outputs import check_output_location, damaged_parts, manifest_entries
from .plan import next_ordinal, plan_record, stored_shards
from .profile import profile_of
from .validate import no_rows_error

ABANDON_AFTER_S = 5.0
"""After an abort (grace period over, a fatal error), how long workers get to wind down before the run
stops without them."""

__all__ = [
    "RunResult",
    "commit_shard",
    "finish_job",
    "input_fingerprint",
    "job_result",
    "nothing_scored",
    "run",
    "status",
]


@dataclass(frozen=True)
class RunResult:
    """What a run did and where its results are."""

    job: str
    state: str
    """complete, failed or interrupted."""
    exit_code: int
    message: str
    rows_total: int | None
    rows_succeeded: int
    rows_failed: int
    shards_total: int
    shards_committed: int
    rows_this_run: int
    seconds: float
    output_path: str
    manifest_path: str | None
    ledger_path: str
    already_complete: bool = False
    """True when the job was complete before this call: nothing was run."""
    verdict: tuple[str, ...] = ()
    """The profile's verdict over the job's committed shards (``infermill profile`` shows the rest)."""
    input_changes: InputChanged | None = None
    """What this run found changed in the input since the last run (an incremental run), else None."""

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["verdict"] = list(self.verdict)
        data["input_changes"] = dataclasses.asdict(self.input_changes) if self.input_changes else None
        return data

    def lines(self) -> list[str]:
        """The summary ``infermill run`` prints."""
        if self.already_complete:
            return [f"{self.job}: {self.message} ({plural(self.rows_succeeded, 'row')} in {self.output_path})"]
        rate = self.rows_this_run / self.seconds if self.seconds > 0 else 0.0
        failed = f", {self.rows_failed:,} dead-lettered (see `infermill failures`)" if self.rows_failed else ""
        changes = [f"  input:    {self.input_changes.summary()}"] if self.input_changes else []
        return [
            f"{self.job}: {self.state}: {plural(self.rows_succeeded, 'row')} in "
            f"{plural(self.shards_committed, 'shard')}{failed} ({self.rows_this_run:,} this run, "
            f"{self.seconds:.1f}s, {rate:,.0f} rows/s)",
            f"  output:   {self.output_path}",
            f"  manifest: {self.manifest_path}",
            f"  ledger:   {self.ledger_path}",
            *changes,
        ]


@contextmanager
def _signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT/SIGTERM to ``on_signal`` while a run is active (main thread only).

    Once a signal has arrived the process is on its way out, and a further signal must still mean "exit 75
    now" after the run loop returned (closing up, interpreter teardown): restoring the default action there
    would kill the process with -15 instead. So the handler that exits 75 stays until the process ends,
    unless the embedding program had installed a handler of its own, which gets its signals back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    received = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal received
        received = True
        on_signal(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            default = old in (signal.SIG_DFL, signal.default_int_handler, None)
            signal.signal(sig, _exit_interrupted if received and default else old)


def _exit_interrupted(signum: int, _frame: Any) -> NoReturn:
    """A signal after the first: exit at once. Everything committed is durable; a rerun resumes."""
    # os.write, not print: a handler may run in the middle of another write to stderr.
    with suppress(OSError):
        os.write(2, f"{signal.Signals(signum).name} again: exiting at once (75); rerun to resume\n".encode())
    os._exit(EXIT_INTERRUPTED)


def input_fingerprint(shards: list[Shard]) -> str:
    """A digest of the planned shards' ids. Shard ids hold each file's path relative to the input root and
    its size and mtime (or etag), never an absolute path: a moved or copied job folder (``mv``, ``cp -a``)
    and data mounted elsewhere keep the fingerprint, while an edited file changes it."""
    return hashlib.sha256("\n".join(s.shard_id for s in shards).encode()).hexdigest()[:16]


def _ledger_has_path_ids(ledger: Ledger) -> bool:
    """True for a ledger written by an infermill whose shard ids and fingerprints held absolute paths: its
    shard descriptors carry no ``shard_id``. Its fingerprints can never match this version's."""
    rows = ledger.shards()
    return bool(rows) and "shard_id" not in json.loads(rows[0].descriptor)


def run(
    job: JobSpec | str | os.PathLike[str],
    *,
    restart: bool = False,
    full: bool = False,
    wait: bool = False,
    progress: Mode | None = None,
    subscribers: list[Subscriber] | tuple[Subscriber, ...] = (),
) -> RunResult:
    """Run a job to completion (or resume it). Raises an :class:`InfermillError` subclass on failure.

    A job whose input changed since it last ran (files added, changed or deleted; nothing else changed) is
    updated incrementally: only new and changed input is scored, and the rows of deleted input leave the
    output (``[input] on_deleted``). ``full`` recomputes everything over the input as it is now instead
    (as ``restart`` does).

    ``subscribers`` get every event of the run (``infermill.engine.events``): workers' progress, each
    shard's commit, the run's start and end.

    >>> result = run("job.toml")                                # doctest: +SKIP
    >>> result.state, result.rows_succeeded                     # doctest: +SKIP
    ('complete', 1000000)
    """
    spec = as_spec(job)
    started = time.monotonic()
    if full and progress != "off":
        print(f"[{spec.name}] --full: every shard is recomputed over the input as it is now", file=sys.stderr)
    restart = restart or full
    with holding(spec, wait=wait, restart=restart, quiet=progress == "off") as held:
        coordinator = _Coordinator(spec, held, progress, Subscribers(subscribers))
        return coordinator.run(restart=restart, started=started)


def job_file(spec: JobSpec) -> str:
    """How hints name the job: its file, or its name for a spec built in Python."""
    return spec.source_file or spec.name


class _Coordinator:
    def __init__(
        self, spec: JobSpec, held: Held, progress: Mode | None, subscribers: Subscribers | None = None
    ) -> None:
        self.subscribers = subscribers or Subscribers()
        self.planned_again = True
        """False when this run took its shards from the ledger (a resume over an unchanged input)."""
        self.spec = spec
        self.ledger = held.ledger
        self.lease = held.lease
        self.heartbeat = held.heartbeat
        self.progress_mode = progress
        self.sink: Sink = open_sink(spec)
        self.signals = 0
        self.stop_deadline: float | None = None
        self.input_changes: InputChanged | None = None

    # -- setup -------------------------------------------------------------------------------------
    def _warn(self, text: str) -> None:
        if self.progress_mode != "off":
            print(f"[{self.spec.name}] warning: {text}", file=sys.stderr)

    def _plan(self, restart: bool) -> tuple[list[Shard], Any, Any, str]:
        spec, ledger, sink = self.spec, self.ledger, self.sink
        check_output_location(spec)
        source = open_source(spec)
        for note in spec.ignored_keys():
            self._warn(note)
        columns = resolve_columns(spec, source.schema())
        # A resume of the same spec over an unchanged listing takes the plan from the ledger: no metadata
        # is read twice.
        known = ledger.job()
        same_spec = known is not None and known.spec_fingerprint == spec.fingerprint()
        stored = stored_shards(known, ledger, source) if same_spec and not restart else None
        delta: InputDelta | None = None
        if stored is not None:
            shards, self.planned_again = stored, False
            if source.grows_in_place:
                # The plan holds while the input grows (a SQL table's key ranges): ask for new input anyway.
                delta = self._delta(source)
                if delta is not None and (delta.add or delta.drop):
                    shards = sorted([*delta.keep, *delta.add], key=lambda s: s.ordinal)
                elif delta is not None and self.progress_mode != "off":
                    for what in delta.described:  # "no new rows above key K": why nothing is to do
                        print(f"[{spec.name}] input: {what}", file=sys.stderr)
        else:
            # The listing changed: plan only what is new or changed (an incremental run, applied below
            # once nothing but the input is known to have changed), or everything.
            delta = self._delta(source) if same_spec and not restart else None
            shards = sorted([*delta.keep, *delta.add], key=lambda s: s.ordinal) if delta else source.plan()
            self.planned_again = True
        if not shards:  # before the ledger exists: a job of nothing would be "complete" for good
            raise no_rows_error(spec)
        model_fp = load_adapter(spec).fingerprint()
        input_fp = input_fingerprint(shards)
        if restart:
            # Nothing is deleted before the job is known to work: spec, input and model (setup included).
            from .validate import validate

            validate(spec)
        created = sink.claim(OwnerRecord(spec.name, ledger.job_uid(), ledger.path), takeover=restart)
        record = ledger.job()
        if record is not None and not restart:
            changed = [
                what
                for what, old, new in (
                    ("the job spec", record.spec_fingerprint, spec.fingerprint()),
                    ("the model", record.model_fingerprint, model_fp),
                    ("the input files", record.input_fingerprint, input_fp),
                )
                if old != new
            ]
            if changed and not ledger.summary().shards_committed:
                # Fingerprints bind once a shard has committed: before that there is nothing to mix up.
                ledger.reset()
                record = None
            elif changed and _ledger_has_path_ids(ledger):
                raise JobChangedError(
                    f"job '{spec.name}' was last run by an earlier infermill, whose fingerprints held absolute "
                    "paths; this version cannot tell whether the job changed since, so it will not resume it",
                    hint=f"`infermill run {job_file(spec)} --restart` discards the earlier "
                    "results and starts over (or finish the job with the infermill that started it)",
                    job=spec.name,
                )
            elif delta is not None and set(changed) <= {"the input files"} and (changed or not delta.empty):
                # Only the input changed (or only files whose rows are kept were deleted): incremental.
                self._update_plan(delta, source, columns, shards, input_fp)
            elif changed:
                raise JobChangedError(
                    f"{' and '.join(changed)} changed since job '{spec.name}' last ran; infermill will not mix "
                    "results from before and after the change",
                    hint=f"`infermill run {job_file(spec)} --restart` discards the earlier results and starts over "
                    "(or undo the change to resume)",
                    job=spec.name,
                )
        if restart:
            self._clear_output(created)
            ledger.reset()
            record = None
        self._check_foreign(created)
        sink.recover({p.name for p in ledger.committed_parts()})
        if record is None:
            ledger.create_job(
                name=spec.name,
                spec_fingerprint=spec.fingerprint(),
                model_fingerprint=model_fp,
                input_fingerprint=input_fp,
                output_path=sink.display(),
                spec_json=json.dumps(spec.to_dict(redact=True), default=str),
                shards=[(s.shard_id, s.ordinal, s.to_json(), s.rows) for s in shards],
                plan_json=plan_record(source, columns, shards),
            )
        return shards, columns, source, model_fp

    def _delta(self, source: Any) -> InputDelta | None:
        """The job's stored plan compared with the input as it is now (see ``Source.plan_delta``); None when
        the job has no plan yet or the source cannot tell what changed."""
        rows = self.ledger.shards()
        if not rows:
            return None
        previous = [Shard.from_json(row.descriptor) for row in rows]
        first_free = next_ordinal(self.ledger.job(), previous)
        delta: InputDelta | None = source.plan_delta(
            previous, first_free, {r.shard_id for r in rows if r.state == "committed"}
        )
        return delta

    def _update_plan(self, delta: InputDelta, source: Any, columns: Any, shards: list[Shard], input_fp: str) -> None:
        """An incremental run: the stored plan brought up to date with the input (see the module docstring),
        reported before anything changes."""
        ledger, spec = self.ledger, self.spec
        changes = InputChanged(
            spec.name, delta.added, delta.changed, delta.deleted, delta.deleted_kept,
            shards_kept=len(delta.keep), shards_removed=len(delta.drop), shards_added=len(delta.add),
            described=delta.described,
        )
        if not delta.empty:  # else only the plan's grouping differed: nothing to report
            self.input_changes = changes
            if self.progress_mode != "off":
                for line in changes.lines():
                    print(f"[{spec.name}] {line}", file=sys.stderr)
            self.subscribers.emit(changes)
        # The manifest goes first: from here until the end of the run it would name parts that are removed.
        self.sink.unfinalize()
        ledger.replan(
            self.lease, drop=delta.drop, add=[(s.shard_id, s.ordinal, s.to_json(), s.rows) for s in delta.add],
            input_fingerprint=input_fp,
            plan_json=plan_record(source, columns, shards, next_ordinal(ledger.job(), shards)),
        )
        fault_point("after_replan")

    def _clear_output(self, created: bool) -> None:
        """--restart: delete what this job wrote (files its ledger or its manifest names, its attempt files)
        and nothing else; the ledger is reset after, so a crash in between only leaves missing parts that
        the next run recomputes."""
        sink = self.sink
        mine = {p.name for p in self.ledger.committed_parts()}
        manifest = sink.read_manifest()
        if manifest is not None and manifest.get("job") == self.spec.name:
            mine |= {str(f.get("path")) for f in [*manifest.get("files", []), *manifest.get("error_files", [])]}
        present = sink.list_parts()
        sink.remove([n for n in present if n in mine or (not created and sink.is_own_part(n))])
        sink.unfinalize()

    def _check_foreign(self, created: bool) -> None:
        """Refuse result-like files that this job did not write: the manifest would not list them, but a
        reader of the folder would read them as results."""
        sink = self.sink
        known = {p.name for p in self.ledger.committed_parts()}
        foreign = [
            n for n in sink.list_parts() if n not in known and (created or not sink.is_own_part(n))
        ]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputConflictError(
                f"the output directory {sink.display()} holds result files that job '{self.spec.name}' did not "
                f"write: {shown}",
                hint=f"move those files away (e.g. `mv {sink.display(foreign[0])} /tmp/`), or set another "
                f"'[output] path' in {job_file(self.spec)}; infermill never deletes files it did not write",
                job=self.spec.name,
            )

    def _recheck(self) -> None:
        """Send the shards of committed parts that are missing or changed back to pending."""
        problems = damaged_parts(self.ledger, self.sink)
        if not problems:
            return
        for problem in problems:
            self._warn(f"{problem.describe()}: its shard will be recomputed")
        shard_ids = sorted({p.shard_id for p in problems})
        self.ledger.reopen_shards(shard_ids, self.lease, "its committed file was missing or changed")
        self.sink.unfinalize()

    # -- main loop ---------------------------------------------------------------------------------
    def run(self, *, restart: bool, started: float) -> RunResult:
        spec, ledger, sink = self.spec, self.ledger, self.sink
        shards, columns, source, model_fp = self._plan(restart)
        self._recheck()
        summary = ledger.summary()
        if summary.shards_committed == summary.shards_total:
            budget = self._over_budget(final=True)
            if budget is not None:
                raise budget
            record = ledger.job()
            if sink.read_manifest() is None or record is None or record.completed_at is None:
                self._finish()
            if self.input_changes is not None:
                return self._result("complete", EXIT_COMPLETE, "complete", started, 0)
            result = self._result("complete", EXIT_COMPLETE, "nothing to do: the job is already complete", started, 0)
            return dataclasses.replace(result, already_complete=True)

        run_id = ledger.start_run(self.lease)
        sink.prepare()
        sink.unfinalize()
        ledger.requeue_failed(self.lease)
        by_id = {s.shard_id: s for s in shards}
        pending = [by_id[row.shard_id] for row in ledger.shards("pending")]
        self.subscribers.emit(RunStarted(spec.name, run_id, len(pending), len(shards)))
        summary = ledger.summary()
        reporter = ProgressReporter(
            job=spec.name,
            rows_total=summary.rows_planned if summary.shards_with_rows_planned == len(shards) else None,
            shards_total=len(shards),
            rows_done=summary.rows_succeeded,
            shards_done=summary.shards_committed,
            mode=self.progress_mode,
            interval=spec.runtime.progress_interval,
            estimate=RowEstimate.of_plan(
                shards,
                {row.shard_id: (row.rows_out or 0) + row.rows_failed for row in ledger.shards("committed")},
                sample=lambda: sample_rows_per_byte(source, pending[0]) if pending else None,
            ),
        )
        run_spec, note = resolve_batch_size(
            spec,
            ledger=ledger,
            sample=lambda: next(iter(source.read(pending[0], 4096, columns.read)), None) if pending else None,
            features=columns.features,
            schema=source.schema(),
            make_adapter=lambda: load_adapter(spec, threads=threads_per_worker(spec)),
            model_fingerprint=model_fp,
        )
        if note and self.progress_mode != "off":
            print(f"[{spec.name}] {note}", file=sys.stderr)
        # What the source holds for the whole run (a SQL snapshot) is taken now and released in the finally.
        run_spec = source.begin_run(run_spec, self._warn)
        try:
            executor = make_executor(run_spec, columns, pending, attempt=self.lease.token)
        except BaseException:
            source.end_run()
            raise
        failures: list[str] = []
        fatal: InfermillError | None = None
        rows_this_run = 0
        running: set[str] = set()
        try:
            with _signals(self._on_signal):
                executor.start()
                alive = executor.workers
                aborted = False
                aborted_at = 0.0
                while alive > 0:
                    if self.heartbeat.lost.is_set() and fatal is None:
                        fatal = LeaseLostError(
                            "this run's lease was taken over by another run (no heartbeat in time?)",
                            hint="only one run of a job may write at a time; check `infermill status`",
                        )
                    if (fatal is not None or self._past_grace()) and not aborted:
                        executor.abort()
                        aborted, aborted_at = True, time.monotonic()
                    elif aborted and time.monotonic() - aborted_at > ABANDON_AFTER_S:
                        # A worker stuck inside the model (a call that never returns) does not hold the run:
                        # its shard was not committed, so the next run does it again.
                        break
                    elif self.signals:
                        executor.stop()
                    event = executor.get(timeout=0.2)
                    if event is None:
                        continue
                    self.subscribers.emit(event)
                    if isinstance(event, ShardStarted):
                        ledger.mark_running(event.shard_id, self.lease, run_id)
                        running.add(event.shard_id)
                    elif isinstance(event, Progress):
                        reporter.advance(event.rows)
                    elif isinstance(event, ShardStaged):
                        if fatal is not None or aborted:
                            for item in (event.output, event.errors):
                                if item is not None:
                                    sink.abort(item)
                            continue
                        try:
                            rows_this_run += self._commit(event, run_id)
                        except InfermillError as exc:
                            fatal = exc
                            continue
                        running.discard(event.shard_id)
                        reporter.shard_done(event.shard_id, event.output.rows + len(event.dead))
                        budget = self._over_budget(final=False)
                        if budget and fatal is None:
                            fatal = budget
                    elif isinstance(event, ShardFailed):
                        ledger.fail_shard(event.shard_id, self.lease, event.error)
                        running.discard(event.shard_id)
                        failures.append(f"shard {event.shard_id}: {event.error}")
                    elif isinstance(event, WorkerFatal):
                        if fatal is None:
                            fatal = event.error
                    elif isinstance(event, WorkerExited):
                        alive -= 1
        finally:
            reporter.close()
            executor.abort() if (fatal is not None or self.signals) else executor.stop()
            executor.join(timeout=1 if self.signals or fatal is not None else 10)
            for sid in running:
                # In flight when the run stopped: not committed, so it is simply done again next time.
                ledger.requeue_shard(sid, self.lease)
            sink.tidy()
            source.end_run()

        summary = ledger.summary()
        if fatal is not None:
            self._end_run(run_id, "failed", str(fatal))
            raise fatal
        if self.signals:
            message = (
                f"interrupted: {summary.shards_committed} of {summary.shards_total} shards committed; "
                "rerun the same command to resume"
            )
            self._end_run(run_id, "interrupted", message)
            raise InterruptedRunError(message, job=spec.name)
        if failures or summary.shards_committed != summary.shards_total:
            missing = summary.shards_total - summary.shards_committed
            first = failures[0] if failures else "worker stopped before finishing"
            # A shard fails on its input (a file gone, a bomb): that error's own hint says what to do, and a
            # generic "fix and rerun" would lead to "the input changed" once the file is fixed.
            first, _, own_hint = first.partition("\n  hint: ")
            message = f"{missing} of {summary.shards_total} shards failed; first error: {first}"
            self._end_run(run_id, "failed", message)
            raise JobFailedError(
                message,
                hint=own_hint
                or "fix the cause and rerun: committed shards are kept and failed ones are retried "
                "(`infermill status JOB` lists them)",
                job=spec.name,
            )
        budget = self._over_budget(final=True)
        if budget is not None:
            self._end_run(run_id, "failed", str(budget))
            raise budget
        self._finish()
        self._end_run(run_id, "complete")
        return self._result("complete", EXIT_COMPLETE, "complete", started, rows_this_run)

    def _end_run(self, run_id: int, state: str, message: str | None = None) -> None:
        self.ledger.end_run(run_id, state, message)
        self.subscribers.emit(RunEnded(self.spec.name, run_id, state, message or state))

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            _exit_interrupted(signum, None)  # a second signal means now
        grace = self.spec.runtime.grace_seconds
        self.stop_deadline = time.monotonic() + grace
        if self.progress_mode != "off":
            notice = (
                f"[{self.spec.name}] {signal.Signals(signum).name}: stopping; in-flight shards get up to {grace:g} s "
                "to finish, then it exits 75 (send the signal again to exit at once)\n"
            )
            with suppress(OSError):
                os.write(2, notice.encode())

    def _past_grace(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() > self.stop_deadline

    def _commit(self, event: ShardStaged, run_id: int) -> int:
        output, errors = commit_shard(
            self.ledger, self.lease, self.sink, event.shard_id, event.output, event.errors, dead_items=event.dead,
            run_id=run_id, stats=event.stats,
        )
        self.subscribers.emit(
            ShardCommitted(event.shard_id, event.output.rows, len(event.dead), output, errors)
        )
        return event.output.rows + len(event.dead)

    def _over_budget(self, *, final: bool) -> JobFailedError | None:
        """The error to stop with when dead letters exceed ``[errors]``'s budget, or (``final``, no budget set)
        when not one row of the job was scored."""
        errors = self.spec.errors
        if errors.max_failed_rows is None and errors.max_failed_fraction is None:
            return nothing_scored(self.spec, self.ledger) if final else None
        summary = self.ledger.summary()
        failed = summary.rows_failed
        reason = None
        if errors.max_failed_rows is not None and failed > errors.max_failed_rows:
            reason = f"{failed:,} rows failed, more than errors.max_failed_rows = {errors.max_failed_rows:,}"
        elif errors.max_failed_fraction is not None:
            known = summary.shards_with_rows_planned == summary.shards_total
            total = summary.rows_planned if known else summary.rows_succeeded + failed
            # With a known total the check is exact as soon as it trips; otherwise only at the end.
            if (known or final) and total and failed > errors.max_failed_fraction * total:
                reason = (
                    f"{failed:,} of {total:,} rows failed ({failed / total:.2%}), more than "
                    f"errors.max_failed_fraction = {errors.max_failed_fraction:g}"
                )
        if reason is None:
            return None
        return JobFailedError(
            f"error budget exceeded: {reason}",
            hint=f"see `infermill failures {self.spec.source_file or self.spec.name}`; fix the model or data and "
            "run `infermill retry`, or raise the budget in [errors]",
            job=self.spec.name,
        )

    def _finish(self) -> None:
        finish_job(self.spec, self.ledger, self.sink)

    def _result(self, state: str, code: int, message: str, started: float, rows_this_run: int) -> RunResult:
        result = job_result(self.spec, self.ledger, self.sink, state, message, started, rows_this_run, code)
        return dataclasses.replace(result, input_changes=self.input_changes)


def _check(committed: CommittedFile | None) -> PartCheck | None:
    return None if committed is None else PartCheck(committed.bytes, committed.sha256, committed.mtime_ns)


def commit_shard(
    ledger: Ledger,
    lease: Lease,
    sink: Sink,
    shard_id: str,
    staged: StagedFile,
    staged_errors: StagedFile | None,
    *,
    dead_items: list[tuple[Any, ...]],
    run_id: int,
    stats: dict[str, Any] | None = None,
    retry: bool = False,
    resolved_rows: list[int] | None = None,
) -> tuple[CommittedFile | None, CommittedFile | None]:
    """The one commit sequence (``run`` and ``retry``): fence check, rename both files to this attempt's
    names, then the ledger transaction that re-checks the fence and records them with their checks."""
    ledger.check_fence(lease)  # an early way out; placement is safe without it (attempt-named files)
    fault_point("before_rename")
    errors = sink.commit(staged_errors, lease.token) if staged_errors is not None else None
    output = sink.commit(staged, lease.token)
    fault_point("after_rename")
    ledger.commit_shard(
        shard_id, lease, output_file=output.name if output else None, rows_out=staged.rows,
        errors_file=errors.name if errors else None, dead_items=dead_items, run_id=run_id, stats=stats,
        retry=retry, resolved_rows=resolved_rows or [], output_check=_check(output), errors_check=_check(errors),
    )
    fault_point("after_commit")
    return output, errors


def nothing_scored(spec: JobSpec, ledger: Ledger) -> JobFailedError | None:
    """The error for a job whose every row was dead-lettered and that set no ``[errors]`` budget: such a job
    failed (no manifest), whatever the reason. A budget says how many failures are acceptable, so with one
    set only the budget decides."""
    if spec.errors.max_failed_rows is not None or spec.errors.max_failed_fraction is not None:
        return None
    summary = ledger.summary()
    failed = summary.rows_failed
    if summary.rows_succeeded or not failed:
        return None
    groups = ledger.failure_groups()
    cause = ""
    if groups:
        top = groups[0]
        example = (top.example or "").splitlines()
        cause = f"; {top.count:,} with {top.error_class}" + (f", e.g. {example[0]}" if example else "")
    ref = spec.source_file or spec.name
    return JobFailedError(
        f"no row was scored: all {failed:,} rows failed{cause}",
        hint=f"fix the model or data, then run `infermill retry {ref}` to score the failed rows again "
        f"(`infermill failures {ref}` lists them); to accept such a job, set an [errors] budget "
        "(max_failed_fraction = 1.0)",
        job=spec.name,
    )


def finish_job(spec: JobSpec, ledger: Ledger, sink: Sink) -> None:
    """Sweep debris, then write the manifest of a job whose shards are all committed: it lists exactly the
    part files on disk, each with its rows, size and checksum."""
    parts = ledger.committed_parts()
    sink.recover({p.name for p in parts})
    files = [f for p in parts if not p.errors for f in manifest_entries(sink, p)]
    error_files = [f for p in parts if p.errors for f in manifest_entries(sink, p)]
    manifest = {
        "job": spec.name,
        "complete": True,
        "format": spec.output.format,
        "files": files,
        "rows_total": sum(f["rows"] for f in files),
        "error_files": error_files,
        "rows_failed": sum(f["rows"] for f in error_files),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    fault_point("before_manifest")
    sink.finalize(manifest)
    fault_point("after_manifest")
    ledger.mark_complete()


def job_result(
    spec: JobSpec, ledger: Ledger, sink: Sink, state: str, message: str, started: float, rows_this_run: int,
    code: int = EXIT_COMPLETE,
) -> RunResult:
    """The RunResult for the ledger's current counts."""
    summary = ledger.summary()
    return RunResult(
        job=spec.name,
        state=state,
        exit_code=code,
        message=message,
        rows_total=_rows_total(summary, state == "complete"),
        rows_succeeded=summary.rows_succeeded,
        rows_failed=summary.rows_failed,
        shards_total=summary.shards_total,
        shards_committed=summary.shards_committed,
        rows_this_run=rows_this_run,
        seconds=time.monotonic() - started,
        output_path=sink.display(),
        manifest_path=sink.manifest_path() if state == "complete" else None,
        ledger_path=display_location(spec.ledger_path()),
        # Start-up counted from this call's start (planning included), not from the run record's.
        verdict=tuple(profile_of(ledger, since=time.time() - (time.monotonic() - started)).lines()[:2]),
    )
