"""One worker's pipeline: a reader thread, the model loop and a writer thread, joined by bounded queues.

::

    next_shard() ─> reader: read + select features + adapter.preprocess ─┐  (queue of `prefetch` batches)
                                                                          v
                    model loop: adapter.predict + postprocess ──> writer: append to the shard's staged file
                                                                          │
                                                 events: started / progress / staged / shard_failed / fatal

The worker never commits: it reports a staged file and the coordinator (the only process that writes the
ledger) moves it into place. The same code runs in a thread (one worker) or in worker processes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from ..errors import InfermillError, ItemError, ModelLoadError, OutputError
from ..models import load_adapter
from ..models.base import ModelAdapter
from ..sinks import ShardWriter, open_sink
from ..sources import open_source
from ..sources.base import Shard
from ..spec import JobSpec
from .columns import Columns
from .faults import fault_point

__all__ = ["EventQueue", "StopFlags", "WorkerConfig", "run_worker"]


class EventQueue(Protocol):
    def put(self, item: Any) -> None: ...


class TaskQueue(Protocol):
    def get(self, timeout: float | None = None) -> Any: ...


class Flag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class StopFlags:
    stop: Flag
    """No new shards: finish the ones in flight."""
    abort: Flag
    """Abandon in-flight work now."""


@dataclass(frozen=True)
class WorkerConfig:
    spec: JobSpec
    columns: Columns
    worker_id: int
    threads: int
    watch_parent: bool = False
    """Stop when the parent process changes (a worker process whose coordinator died)."""


@dataclass
class _ShardStats:
    rows: int = 0
    batches: int = 0
    read_s: float = 0.0
    preprocess_s: float = 0.0
    model_s: float = 0.0
    model_wait_s: float = 0.0
    write_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, float]:
        return {
            "rows": self.rows,
            "batches": self.batches,
            "read_s": round(self.read_s, 4),
            "preprocess_s": round(self.preprocess_s, 4),
            "model_s": round(self.model_s, 4),
            "model_wait_s": round(self.model_wait_s, 4),
            "write_s": round(self.write_s, 4),
            "wall_s": round(time.perf_counter() - self.started, 4),
        }


_EOF = ("eof",)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InfermillError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _as_fatal(exc: BaseException) -> InfermillError:
    """An exception that can cross a process boundary and tells the user what happened."""
    if isinstance(exc, InfermillError):
        return exc
    if isinstance(exc, OSError):
        return OutputError(f"{type(exc).__name__}: {exc}", hint="check free disk space and permissions")
    return InfermillError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")


def _put(q: queue.Queue[Any], item: Any, flags: StopFlags) -> bool:
    """Put with back-pressure, giving up when the run is aborted."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if flags.abort.is_set():
                return False


def run_worker(
    config: WorkerConfig, next_shard: Callable[[], Shard | None], events: EventQueue, flags: StopFlags
) -> None:
    """Process shards until ``next_shard`` returns None, the run stops, or a fatal error."""
    wid = config.worker_id
    try:
        spec = config.spec
        source = open_source(spec)
        sink = open_sink(spec)
        adapter = load_adapter(spec, threads=config.threads)
        try:
            adapter.setup()
        except InfermillError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model setup failed: {type(exc).__name__}: {exc}",
                hint="run `infermill validate JOB --debug` to see the full traceback",
            ) from exc
        events.put(("ready", wid))
        _Pipeline(config, source, adapter, sink, events, flags).run(next_shard)
        adapter.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, which decides
        events.put(("fatal", wid, _as_fatal(exc)))
    finally:
        events.put(("exit", wid))


class _Pipeline:
    def __init__(
        self,
        config: WorkerConfig,
        source: Any,
        adapter: ModelAdapter,
        sink: Any,
        events: EventQueue,
        flags: StopFlags,
    ) -> None:
        self.config = config
        self.spec = config.spec
        self.columns = config.columns
        self.source = source
        self.adapter = adapter
        self.sink = sink
        self.events = events
        self.flags = flags
        depth = max(1, self.spec.runtime.prefetch)
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.outbox: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stats: dict[str, _ShardStats] = {}
        self.failed: set[str] = set()
        self.error: BaseException | None = None
        self._parent = os.getppid()

    # -- threads -----------------------------------------------------------------------------------
    def run(self, next_shard: Callable[[], Shard | None]) -> None:
        reader = threading.Thread(target=self._read, args=(next_shard,), name="infermill-reader", daemon=True)
        writer = threading.Thread(target=self._write, name="infermill-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            self._model_loop()
        except BaseException as exc:  # noqa: BLE001 - re-raised below once the threads stopped
            self._fail(exc)
        finally:
            if self.error is not None:
                _abort_flag(self.flags)
            reader.join()
            writer.join()
        if self.error is not None:
            raise self.error

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def _aborted(self) -> bool:
        return self.flags.abort.is_set() or self.error is not None

    def _read(self, next_shard: Callable[[], Shard | None]) -> None:
        try:
            columns = self.columns
            batch_size = self.spec.batch.size
            while not self.flags.stop.is_set() and not self._aborted():
                shard = next_shard()
                if shard is None:
                    break
                sid = shard.shard_id
                stats = self.stats[sid] = _ShardStats()
                if not _put(self.inbox, ("start", shard), self.flags):
                    return
                batches = self.source.read(shard, batch_size, columns.read)
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except InfermillError as exc:
                        _put(self.inbox, ("error", shard, exc), self.flags)
                        break
                    t1 = time.perf_counter()
                    stats.read_s += t1 - t0
                    if self._aborted() or self._parent_gone():
                        _put(self.inbox, ("abandon", shard), self.flags)
                        return
                    if sid in self.failed:
                        break
                    try:
                        inputs = self.adapter.preprocess(batch.select(columns.features))
                    except (ItemError, ValueError, TypeError, pa.ArrowException) as exc:
                        _put(self.inbox, ("error", shard, exc), self.flags)
                        break
                    stats.preprocess_s += time.perf_counter() - t1
                    if not _put(self.inbox, ("batch", shard, batch, inputs), self.flags):
                        return
                if not _put(self.inbox, ("end", shard), self.flags):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the model loop
            self._fail(exc)
        finally:
            _put(self.inbox, _EOF, self.flags)

    def _parent_gone(self) -> bool:
        # A worker process whose coordinator died (kill -9) must stop: nobody would commit its work.
        return self.config.watch_parent and os.getppid() != self._parent

    def _model_loop(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                item = self.inbox.get(timeout=0.1)
            except queue.Empty:
                if self._aborted():
                    break
                continue
            kind = item[0]
            if kind == "eof":
                break
            shard: Shard = item[1]
            sid = shard.shard_id
            stats = self.stats.get(sid)
            if kind == "start":
                self.events.put(("started", self.config.worker_id, sid))
                if stats is not None:
                    stats.model_wait_s += time.perf_counter() - t0
                if not _put(self.outbox, item, self.flags):
                    break
            elif kind == "batch":
                if stats is not None:
                    stats.model_wait_s += time.perf_counter() - t0
                if sid in self.failed:
                    continue
                batch, inputs = item[2], item[3]
                t1 = time.perf_counter()
                try:
                    result = self.adapter.predict(inputs)
                    columns = self.adapter.postprocess(result, batch.num_rows)
                except (OutputError, ModelLoadError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a model failure fails this shard, not the run
                    self._shard_failed(shard, exc)
                    continue
                if stats is not None:
                    stats.model_s += time.perf_counter() - t1
                    stats.batches += 1
                fault_point("after_batch")
                if not _put(self.outbox, ("batch", shard, self._table(batch, columns)), self.flags):
                    break
            elif kind == "error":
                self._shard_failed(shard, item[2])
            elif kind in ("end", "abandon"):
                if not _put(self.outbox, item, self.flags):
                    break
        _put(self.outbox, _EOF, self.flags)

    def _shard_failed(self, shard: Shard, exc: BaseException) -> None:
        sid = shard.shard_id
        if sid in self.failed:
            return
        self.failed.add(sid)
        detail = "".join(traceback.format_exception(exc, limit=6))
        self.events.put(("shard_failed", self.config.worker_id, sid, _describe(exc), detail))
        _put(self.outbox, ("abandon", shard), self.flags)

    def _table(self, batch: pa.RecordBatch, outputs: dict[str, pa.Array]) -> pa.Table:
        names = [self.columns.id, *self.columns.keep]
        arrays = [batch.column(n) for n in names]
        for name, array in outputs.items():
            names.append(name)
            arrays.append(array)
        return pa.Table.from_arrays(arrays, names=names)

    def _write(self) -> None:
        writers: dict[str, ShardWriter] = {}
        try:
            while True:
                try:
                    item = self.outbox.get(timeout=0.1)
                except queue.Empty:
                    if self._aborted():
                        break
                    continue
                kind = item[0]
                if kind == "eof":
                    break
                shard: Shard = item[1]
                sid = shard.shard_id
                if kind == "start":
                    writers[sid] = self.sink.open_writer(shard.ordinal)
                elif kind == "batch":
                    if sid in self.failed or sid not in writers:
                        continue
                    t0 = time.perf_counter()
                    table: pa.Table = item[2]
                    writers[sid].write(table)
                    stats = self.stats.get(sid)
                    if stats is not None:
                        stats.write_s += time.perf_counter() - t0
                        stats.rows += table.num_rows
                    self.events.put(("progress", self.config.worker_id, table.num_rows))
                elif kind == "abandon":
                    writer = writers.pop(sid, None)
                    if writer is not None:
                        writer.abort()
                elif kind == "end":
                    writer = writers.pop(sid, None)
                    if writer is None or sid in self.failed:
                        if writer is not None:
                            writer.abort()
                        continue
                    staged = writer.close()
                    fault_point("after_stage")
                    stats = self.stats.pop(sid, None)
                    self.events.put(
                        ("staged", self.config.worker_id, sid, staged, stats.as_dict() if stats else {})
                    )
        except BaseException as exc:  # noqa: BLE001 - handed to the model loop
            self._fail(exc)
            _abort_flag(self.flags)
        finally:
            for writer in writers.values():
                writer.abort()


def _abort_flag(flags: StopFlags) -> None:
    setter = getattr(flags.abort, "set", None)
    if setter is not None:
        setter()
