"""The engine's event stream: what workers tell the coordinator, and what the coordinator tells subscribers.

Workers (threads or processes) put worker events on their executor's queue; they cross process
boundaries, so each is a frozen dataclass of picklable fields::

    WorkerReady ─> ShardStarted ─> Progress* ─> ShardStaged | ShardFailed ─> ... ─> WorkerFatal? ─> WorkerExited

The coordinator consumes them, commits staged shards, and hands every event, plus its own
(``RunStarted``, ``ShardCommitted``, ``RunEnded``), to the subscribers of the run: an object with an
``on_event(event)`` method (:class:`Subscriber`), given to ``infermill.run(job, subscribers=[...])``.
Progress display, metrics and reports subscribe here. A subscriber runs on the coordinator's thread and
must be quick; an exception it raises is reported once on stderr and the subscriber is dropped, never
the run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InfermillError
from ..sinks import CommittedFile, StagedFile

__all__ = [
    "Event",
    "InputChanged",
    "Progress",
    "RunEnded",
    "RunStarted",
    "ShardCommitted",
    "ShardFailed",
    "ShardStaged",
    "ShardStarted",
    "Subscriber",
    "Subscribers",
    "WorkerEvent",
    "WorkerExited",
    "WorkerFatal",
    "WorkerReady",
]


@dataclass(frozen=True)
class WorkerReady:
    """A worker loaded its model and takes shards."""

    worker: int


@dataclass(frozen=True)
class ShardStarted:
    worker: int
    shard_id: str


@dataclass(frozen=True)
class Progress:
    """Rows of a shard written (scored or dead-lettered) since the last progress event."""

    worker: int
    rows: int


@dataclass(frozen=True)
class ShardStaged:
    """A shard is finished and its results are staged: ready for the coordinator's commit."""

    worker: int
    shard_id: str
    output: StagedFile
    errors: StagedFile | None
    """Its dead letters' file, if any row failed."""
    dead: list[tuple[Any, ...]] = field(default_factory=list)
    """The dead letters' ledger records: ``(item_id, row_index, attempts, error_class, error_kind, message,
    traceback)``."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Stage timings and scoring counts (``ShardStats.as_dict``)."""


@dataclass(frozen=True)
class ShardFailed:
    """A shard could not be finished (an error outside any one row); it is retried by the next run."""

    worker: int
    shard_id: str
    error: str
    detail: str = ""
    """The traceback."""


@dataclass(frozen=True)
class WorkerFatal:
    """The worker cannot go on (model load failed, a broken model, a fatal error): the run stops."""

    worker: int
    error: InfermillError


@dataclass(frozen=True)
class WorkerExited:
    """The worker's last event."""

    worker: int


WorkerEvent = WorkerReady | ShardStarted | Progress | ShardStaged | ShardFailed | WorkerFatal | WorkerExited


@dataclass(frozen=True)
class InputChanged:
    """An incremental run found the input changed since the last run; emitted (and printed) before the
    plan is changed. Paths are relative to the input root."""

    job: str
    added: tuple[str, ...]
    changed: tuple[str, ...]
    deleted: tuple[str, ...]
    deleted_kept: bool
    """True with ``[input] on_deleted = "keep"``: deleted files' rows stay in the output."""
    shards_kept: int
    """Earlier shards whose committed parts stay as they are."""
    shards_removed: int
    """Earlier shards whose results leave the output (their input changed or was deleted)."""
    shards_added: int
    """New shards: new and changed files, and the unchanged files that shared a shard with them."""
    described: tuple[str, ...] = ()
    """The changes in words, for an input that is not files (a SQL table's new and changed rows): reported
    instead of the file counts."""

    def lines(self) -> list[str]:
        """One line per kind of change, then the plan's."""
        out = [f"input: {what}" for what in self.described]
        if self.added:
            out.append(f"input: {_files(self.added)} added since the last run: their rows will be scored")
        if self.changed:
            out.append(f"input: {_files(self.changed)} changed since the last run: their rows will be recomputed")
        if self.deleted:
            fate = "stay in the output (on_deleted = \"keep\")" if self.deleted_kept else "leave the output"
            out.append(f"input: {_files(self.deleted)} deleted since the last run: their rows {fate}")
        out.append(
            f"plan: {self.shards_kept:,} shards kept, {self.shards_removed:,} removed, {self.shards_added:,} new"
        )
        return out

    def summary(self) -> str:
        """``2 files added, 1 changed, 1 deleted (rows removed)``."""
        if self.described:
            return "; ".join(self.described)
        deleted = f"{len(self.deleted):,} deleted" + (
            (" (rows kept)" if self.deleted_kept else " (rows removed)") if self.deleted else ""
        )
        return f"{len(self.added):,} files added, {len(self.changed):,} changed, {deleted}"


def _files(paths: tuple[str, ...]) -> str:
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{len(paths):,} file{'' if len(paths) == 1 else 's'}" + (f" ({shown})" if paths else "")


@dataclass(frozen=True)
class RunStarted:
    job: str
    run_id: int
    shards_pending: int
    shards_total: int


@dataclass(frozen=True)
class ShardCommitted:
    shard_id: str
    rows_succeeded: int
    rows_failed: int
    output: CommittedFile | None
    errors: CommittedFile | None


@dataclass(frozen=True)
class RunEnded:
    job: str
    run_id: int
    state: str
    """complete, failed or interrupted."""
    message: str


Event = WorkerEvent | InputChanged | RunStarted | ShardCommitted | RunEnded


class Subscriber(Protocol):
    def on_event(self, event: Event) -> None: ...


class Subscribers:
    """Hands events to the run's subscribers; one that raises is reported and dropped."""

    def __init__(self, subscribers: list[Subscriber] | tuple[Subscriber, ...] = ()) -> None:
        self._subscribers = list(subscribers)

    def emit(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.on_event(event)
            except Exception as exc:  # noqa: BLE001 - a subscriber never fails the run
                self._subscribers.remove(subscriber)
                print(
                    f"infermill: subscriber {subscriber!r} raised {type(exc).__name__}: {exc}; it gets no more events",
                    file=sys.stderr,
                )
