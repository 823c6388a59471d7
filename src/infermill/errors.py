"""The infermill error tree.

Every error infermill raises on purpose derives from :class:`InfermillError`. Each class knows the
process exit code the CLI uses for it and whether retrying the same work may succeed (``transient``).

::

    InfermillError                      exit 1  (root; a job that failed)
    ├── SpecError                       exit 2  the job file or a Python spec is invalid
    │   ├── InputError                  exit 2  the input is missing, empty or lacks a column
    │   ├── ModelLoadError              exit 2  the model cannot be found, trusted or loaded
    │   └── JobChangedError             exit 2  spec, model or input changed since the last run
    ├── OutputError                     exit 1  the output cannot be written (fatal)
    │   └── OutputConflictError         exit 2  the output location belongs to another job, or holds
    │                                           files infermill did not write, or lies inside the input
    ├── LedgerError                     exit 1  the ledger cannot be opened or read, or holds no such shard
    ├── JobLockedError                  exit 3  another run of the same job holds the lease
    ├── LeaseLostError                  exit 3  this run's lease was taken over (fencing)
    ├── JobFailedError                  exit 1  the run ended with failed shards, over budget, or no row scored
    │   └── ModelFailedError            exit 1  every row of several batches in a row failed the same way
    ├── InterruptedRunError             exit 75 stopped by a signal; rerun to resume
    ├── ItemError                       per item: the model cannot score this item (never retried)
    │   └── PartialBatchError           per call: some rows answered, the others failed, each its own way
    └── TransientError                  exit 75 per call: may succeed when retried (``transient = True``);
                                                one that escapes the run makes it exit 75 (safe to retry)
        └── StorageError                exit 75 an object store kept failing (5xx, throttling, dropped
                                                connections) after infermill's bounded retries

User model code may raise :class:`ItemError` or :class:`TransientError` (or subclass them) to tell the
engine how to treat a failure. A call that answered some rows of its batch and not others raises
:class:`PartialBatchError` with the answers and one error per failed row: the engine keeps the answers and
treats each failed row by its own error. Errors carry context (job, shard, item) in attributes, and survive pickling
across worker processes.

The exit codes are a contract that callers (cron, systemd, ``infermill serve``, orchestrators) act on,
kept stable across releases; :func:`outcome_of` reads one, a process killed by a signal included::

    0   complete (or nothing left to do)                       -> success
    1   failed: shards failed, error budget, model failure     -> fail, do not retry
    2   invalid job, input, model or usage                     -> fail, do not retry
    3   another run holds the job's lease                      -> retry after a wait
    75  interrupted (SIGTERM/SIGINT) or transient: resumes     -> retry after a wait
    <0  (a process killed by a signal, as subprocess reports)  -> fail: never success
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EXIT_COMPLETE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_USAGE",
    "ExitOutcome",
    "InfermillError",
    "InputError",
    "InterruptedRunError",
    "ItemError",
    "JobChangedError",
    "JobFailedError",
    "JobLockedError",
    "LeaseLostError",
    "LedgerError",
    "ModelFailedError",
    "ModelLoadError",
    "OutputConflictError",
    "OutputError",
    "PartialBatchError",
    "SpecError",
    "StorageError",
    "TransientError",
    "outcome_of",
]

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 75


@dataclass(frozen=True)
class ExitOutcome:
    """What a caller should make of a run's exit code (see the table in this module's docstring)."""

    code: int
    state: str
    """complete, failed, invalid, locked, interrupted or killed (by a signal)."""
    success: bool
    retry: bool
    """True when running the same command again (after a wait) is safe and resumes."""


_OUTCOMES = {
    EXIT_COMPLETE: ("complete", True, False),
    EXIT_FAILED: ("failed", False, False),
    EXIT_USAGE: ("invalid", False, False),
    EXIT_LOCKED: ("locked", False, True),
    EXIT_INTERRUPTED: ("interrupted", False, True),
}


def outcome_of(returncode: int) -> ExitOutcome:
    """Read an ``infermill`` exit code (as ``subprocess`` reports it: negative when killed by a signal).

    A process killed by a signal (SIGKILL by the OOM killer, a SIGSEGV in a native library) never
    reached the point where infermill decides: it is a failure, never a success; its committed shards
    are kept, and the next run of the job resumes. Any code outside the contract is a failure too.

    >>> outcome_of(75).retry, outcome_of(-9).success
    (True, False)
    """
    if returncode < 0:
        return ExitOutcome(returncode, "killed", False, False)
    state, success, retry = _OUTCOMES.get(returncode, ("failed", False, False))
    return ExitOutcome(returncode, state, success, retry)


class InfermillError(Exception):
    """Root of every infermill error. ``hint`` says what the user can do next."""

    exit_code: int = EXIT_FAILED
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        job: str | None = None,
        shard: str | None = None,
        item: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.job = job
        self.shard = shard
        self.item = item

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword context when an error crosses a process boundary.
        return (
            _rebuild,
            (type(self), self.message, self.hint, self.job, self.shard, self.item),
        )


def _rebuild(
    cls: type[InfermillError],
    message: str,
    hint: str | None,
    job: str | None,
    shard: str | None,
    item: str | None,
) -> InfermillError:
    return cls(message, hint=hint, job=job, shard=shard, item=item)


class SpecError(InfermillError):
    """The job file or spec is invalid: a bad key, type or value."""

    exit_code = EXIT_USAGE


class InputError(SpecError):
    """The input cannot be found, matches nothing, or lacks a configured column."""


class ModelLoadError(SpecError):
    """The model cannot be located, is not trusted, or fails to load."""


class JobChangedError(SpecError):
    """The spec, the model or the input changed since the job's last run."""


class OutputError(InfermillError):
    """The output location cannot be written. Fatal: the run stops, committed work stays."""


class OutputConflictError(OutputError):
    """The output location cannot be used by this job: another job owns it, it holds result files this job
    did not write, or it lies inside the input. Nothing was written."""

    exit_code = EXIT_USAGE


class LedgerError(InfermillError):
    """The ledger cannot be opened (a file that is not an SQLite database, or one that cannot be read; a
    PostgreSQL server that cannot be reached), a shard is not in it, or a shard state change is one the
    state machine forbids. Several jobs may share one ledger: each job has its own rows, keyed by its
    name, so a ledger that other jobs use too is no error."""


class JobLockedError(InfermillError):
    """Another live run of the same job holds the lease."""

    exit_code = EXIT_LOCKED


class LeaseLostError(InfermillError):
    """This run's lease was taken over by another run; it must not commit anything more."""

    exit_code = EXIT_LOCKED


class JobFailedError(InfermillError):
    """The run ended without completing the job: shards failed, the error budget was exceeded, or (with no
    budget set) not one row was scored."""


class ModelFailedError(JobFailedError):
    """The model failed on every row of several consecutive batches with the same error: the model (its code,
    its environment or its server), not the data, is broken. The run stops; committed work is kept.

    ``error_class`` and ``error_message`` are the model's error, as the dead letters would have recorded it.
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str = "",
        error_message: str = "",
        hint: str | None = None,
        job: str | None = None,
        shard: str | None = None,
        item: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, job=job, shard=shard, item=item)
        self.error_class = error_class
        self.error_message = error_message

    def __reduce__(self) -> tuple[Any, ...]:
        # The model's error class and message cross the worker process boundary with the rest.
        return (
            _rebuild_model_failed,
            (self.message, self.error_class, self.error_message, self.hint, self.job, self.shard, self.item),
        )


def _rebuild_model_failed(
    message: str,
    error_class: str,
    error_message: str,
    hint: str | None,
    job: str | None,
    shard: str | None,
    item: str | None,
) -> ModelFailedError:
    return ModelFailedError(
        message, error_class=error_class, error_message=error_message, hint=hint, job=job, shard=shard, item=item
    )


class InterruptedRunError(InfermillError):
    """The run was stopped by a signal; committed work is kept and a rerun resumes."""

    exit_code = EXIT_INTERRUPTED


class ItemError(InfermillError):
    """The model cannot score an item (bad data). The item is not retried."""


class TransientError(InfermillError):
    """A failure that may succeed when retried (timeouts, throttling, flaky servers)."""

    transient = True
    # Escaping the run (a model's setup that timed out, a throttled server): the run stopped before the
    # job could finish, and the same command may well succeed later. It resumes.
    exit_code = EXIT_INTERRUPTED


class StorageError(TransientError):
    """An object store (S3 or any fsspec store) kept failing in a way that passes (5xx, SlowDown and other
    throttling, a dropped connection, a timeout) after infermill retried the call with backoff as many times
    as :mod:`infermill.store` allows. Nothing half-done is left committed; a rerun resumes."""


class PartialBatchError(ItemError):
    """A call (``predict``) that answered some rows of its batch and failed the others, each with its own error.

    ``result`` is what ``predict`` would return for the answered rows alone, in their order (the adapter's
    ``postprocess`` makes their columns); ``errors`` maps the index of each failed row in the call's batch
    to its error. The engine (``BatchScorer``) keeps the answers and treats the failed rows by their own
    errors' classes: transient ones are retried together, item errors bisected, what is left dead-lettered
    with its own message. An engine that does not know this class sees an ItemError and bisects the batch.
    ``result`` and ``errors`` stay in the process that raised it (they are not pickled).
    """

    def __init__(
        self,
        message: str,
        *,
        result: Any = None,
        errors: Mapping[int, BaseException] | None = None,
        hint: str | None = None,
        job: str | None = None,
        shard: str | None = None,
        item: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, job=job, shard=shard, item=item)
        self.result = result
        self.errors: dict[int, BaseException] = dict(errors or {})
