"""Executors run workers and hand their events to the coordinator.

``InlineExecutor`` runs one worker in a thread of this process (``runtime.workers = 1``: no process start
cost, no pickling). ``ProcessExecutor`` starts one process (spawn) per planned worker (``devices.plan_workers``:
``workers`` CPU workers, or one per GPU and replica, each pinned to its GPU), each loading the model once.
Both expose the same small surface: ``start``, ``get`` (next event), ``stop`` (take no new shards),
``abort`` (abandon in-flight work) and ``join``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
from abc import ABC, abstractmethod
from typing import Any

from .. import registry
from ..errors import InfermillError
from ..sources.base import Shard
from ..spec import JobSpec
from .columns import Columns
from .devices import WorkerSlot, plan_workers
from .events import WorkerEvent, WorkerExited, WorkerFatal
from .worker import StopFlags, WorkerConfig, run_worker

__all__ = ["Executor", "InlineExecutor", "ProcessExecutor", "make_executor", "threads_per_worker"]


def threads_per_worker(spec: JobSpec, workers: int | None = None) -> int:
    """``runtime.threads_per_worker``, or the CPU cores shared out between ``workers`` (default
    ``runtime.workers``) workers."""
    if spec.runtime.threads_per_worker:
        return spec.runtime.threads_per_worker
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // (workers or spec.runtime.workers))


class Executor(ABC):
    attempt: int | None = None
    """The run's attempt (lease epoch), handed to every worker (``WorkerConfig.attempt``)."""

    def __init__(
        self, spec: JobSpec, columns: Columns, shards: list[Shard], plan: list[WorkerSlot] | None = None
    ) -> None:
        self.spec = spec
        self.columns = columns
        self.shards = shards
        self.plan = plan if plan is not None else plan_workers(spec, len(shards))
        self.workers = len(self.plan)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def get(self, timeout: float) -> WorkerEvent | None:
        """The next event, or None after ``timeout`` seconds."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def join(self, timeout: float) -> None: ...


class InlineExecutor(Executor):
    """One worker on a thread of the coordinator's process."""

    def __init__(
        self, spec: JobSpec, columns: Columns, shards: list[Shard], plan: list[WorkerSlot] | None = None
    ) -> None:
        super().__init__(spec, columns, shards, plan)
        self.workers = 1
        self._tasks: queue.SimpleQueue[Shard] = queue.SimpleQueue()
        for shard in shards:
            self._tasks.put(shard)
        self._events: queue.SimpleQueue[WorkerEvent] = queue.SimpleQueue()
        self._flags = StopFlags(stop=threading.Event(), abort=threading.Event())
        self._thread: threading.Thread | None = None

    def _next(self) -> Shard | None:
        try:
            return self._tasks.get_nowait()
        except queue.Empty:
            return None

    def start(self) -> None:
        # No pinning in this process: the coordinator may have started CUDA already.
        config = WorkerConfig(
            self.spec, self.columns, worker_id=0, threads=self.plan[0].threads, attempt=self.attempt
        )
        self._thread = threading.Thread(
            target=run_worker, args=(config, self._next, self._events, self._flags), name="infermill-worker",
            daemon=True,
        )
        self._thread.start()

    def get(self, timeout: float) -> WorkerEvent | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._flags.stop.set()  # type: ignore[attr-defined]

    def abort(self) -> None:
        self._flags.stop.set()  # type: ignore[attr-defined]
        self._flags.abort.set()  # type: ignore[attr-defined]

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def _process_main(
    config: WorkerConfig, tasks: Any, events: Any, stop: Any, abort: Any
) -> None:
    if config.gpu is not None:
        # First thing in the child, before any CUDA library initialises: this worker sees one GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpu
    # The coordinator owns signals: Ctrl-C reaches the whole process group, but only the coordinator
    # decides what to finish and what to abandon.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def next_shard() -> Shard | None:
        item = tasks.get()
        return None if item is None else Shard.from_json(item)

    run_worker(config, next_shard, events, StopFlags(stop=stop, abort=abort))
    events.close()
    events.join_thread()


class ProcessExecutor(Executor):
    """One process per planned worker, each with its own model."""

    def __init__(
        self, spec: JobSpec, columns: Columns, shards: list[Shard], plan: list[WorkerSlot] | None = None
    ) -> None:
        super().__init__(spec, columns, shards, plan)
        self._ctx = mp.get_context("spawn")
        self._tasks: Any = self._ctx.Queue()
        self._events: Any = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._abort = self._ctx.Event()
        self._procs: list[Any] = []
        self._wids: list[int] = []
        self._said_goodbye: set[int] = set()
        self._reported: set[int] = set()

    def start(self) -> None:
        for shard in self.shards:
            self._tasks.put(shard.to_json())
        for _ in range(self.workers):
            self._tasks.put(None)
        for slot in self.plan:
            config = WorkerConfig(
                self.spec, self.columns, worker_id=slot.worker_id, threads=slot.threads, watch_parent=True,
                gpu=slot.gpu, attempt=self.attempt,
            )
            proc = self._ctx.Process(
                target=_process_main,
                args=(config, self._tasks, self._events, self._stop, self._abort),
                name=f"infermill-worker-{slot.worker_id}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
            self._wids.append(slot.worker_id)

    def get(self, timeout: float) -> WorkerEvent | None:
        try:
            event: WorkerEvent = self._events.get(timeout=timeout)
        except queue.Empty:
            return self._died()
        if isinstance(event, WorkerExited):
            self._said_goodbye.add(event.worker)
        return event

    def _died(self) -> WorkerEvent | None:
        """A fatal event for a worker process that ended without reporting (killed, crashed, or a script
        that re-ran itself on import); its exit follows on the next call."""
        for wid, proc in zip(self._wids, self._procs, strict=True):
            if proc.exitcode is None or wid in self._said_goodbye:
                continue
            if wid in self._reported:
                self._said_goodbye.add(wid)
                return WorkerExited(wid)
            self._reported.add(wid)
            return WorkerFatal(
                wid,
                InfermillError(
                    f"worker process {wid} ended unexpectedly (exit code {proc.exitcode})",
                    hint="if infermill.run() is called from a script with runtime.workers > 1, put the call under "
                    "`if __name__ == '__main__':` (workers are spawned and import the script); otherwise check "
                    "memory (a killed worker) and rerun: committed shards are kept",
                ),
            )
        return None

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()
        self._abort.set()

    def join(self, timeout: float) -> None:
        for wid, proc in zip(self._wids, self._procs, strict=True):
            if wid in self._said_goodbye:
                # Its last event is in: its files are closed and its results reported. What it has left
                # is the interpreter's teardown (0.1-0.2 s with pandas and scikit-learn loaded), which
                # need not hold up the run; multiprocessing reaps the process later.
                continue
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self._tasks.cancel_join_thread()
        self._tasks.close()


def make_executor(spec: JobSpec, columns: Columns, shards: list[Shard], *, attempt: int | None = None) -> Executor:
    plan = plan_workers(spec, len(shards))
    # One worker needs no process of its own, unless it must be pinned to a GPU the user listed: with
    # devices = "auto" a lone worker takes cuda:0 of what this process sees, which is what pinning gives.
    pinned = plan[0].gpu is not None and spec.runtime.devices != "auto"
    name = spec.runtime.executor
    if name == "auto":
        name = "inline" if len(plan) <= 1 and not pinned else "process"
    cls = registry.load("executors", name)
    executor: Executor = cls(spec, columns, shards, plan)
    executor.attempt = attempt
    return executor
