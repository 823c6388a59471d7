"""One worker's pipeline: a reader thread, the model loop and a writer thread, joined by bounded queues.

::

    next_shard() ─> reader: read + select features + adapter.preprocess ─┐  (queue of `prefetch` batches)
                                                                          v
                    model loop: adapter.predict + postprocess ──> writer: append to the shard's staged file
                                                                          │
                                                 events (engine/events.py): ShardStarted / Progress /
                                                 ShardStaged / ShardFailed / WorkerFatal

The worker never commits: it reports a staged file and the coordinator (the only process that writes the
ledger) moves it into place. The same code runs in a thread (one worker) or in worker processes.

Lanes: an adapter whose calls can run side by side (``ModelAdapter.lanes()`` > 1, e.g. scikit-learn with
``parallel = "rows"``) gets that many batches scored at once, each on its own lane thread with a
single-threaded call; the model loop hands the results on strictly in input order. Unlike one call split
across threads, a lane that finishes never waits for the others, so no core idles at a barrier while the
reader or writer holds the other one.

No lane idles while work is queued: when a batch reaches the model loop with no other batch waiting behind
it (a job smaller than one batch, the tail of the input, or a reader that is behind), it is cut into one
contiguous piece per lane (of at least ``MIN_PIECE_ROWS`` rows), the pieces are scored side by side, each
under the full error policy (retry, bisect, OOM split), and joined back into the batch's result, in order.
A piece gets its rows of the batch's preprocessed inputs when the adapter can slice them
(``slice_inputs``), else it is preprocessed again on its lane.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ..accelerate.verify import accelerated, shard_facts
from ..errors import InfermillError, ModelLoadError, OutputError
from ..models import load_adapter
from ..models.base import ModelAdapter
from ..sinks import ShardWriter, open_sink
from ..sources import open_source
from ..sources.base import INPUT_ERROR, Shard, concat_batches
from ..spec import JobSpec
from .batching import row_bytes
from .breaker import FailureStreak
from .columns import Columns
from .events import Progress, ShardFailed, ShardStaged, ShardStarted, WorkerExited, WorkerFatal, WorkerReady
from .faults import fault_point
from .memory import reusing_arrow_memory
from .policy import classify
from .scoring import BatchScorer, DeadItem, RunAborted, ScoreStats

__all__ = ["MIN_PIECE_ROWS", "EventQueue", "StopFlags", "WorkerConfig", "dead_letter_table", "run_worker"]

MIN_PIECE_ROWS = 64
"""A batch is cut for idle lanes only into pieces of at least this many rows: smaller calls cost more in
per-call overhead than the idle lane would have added."""


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
    gpu: str | None = None
    """The CUDA device this worker process is pinned to (its ``CUDA_VISIBLE_DEVICES``), or None."""
    attempt: int | None = None
    """The run's attempt (lease epoch): results are written for it (``Sink.attempt``)."""


@dataclass
class _ShardStats:
    rows: int = 0
    batches: int = 0
    read_s: float = 0.0
    preprocess_s: float = 0.0
    model_s: float = 0.0
    model_wait_s: float = 0.0
    inbox_depth: int = 0
    """Sum over batches of the batches waiting for the model (read ahead) when it took one."""
    outbox_depth: int = 0
    """Sum over batches of the results waiting for the writer."""
    write_s: float = 0.0
    lanes: int = 1
    lane_busy_s: float = 0.0
    """Seconds of model calls summed over the lanes (``lanes`` x wall time: every lane busy throughout)."""
    split_batches: int = 0
    """Batches cut into one piece per lane because no other batch was waiting for the lanes."""
    setup_s: float | None = None
    """The worker's model set-up (heavy imports and model load), on the first shard it scored."""
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    scoring: ScoreStats = field(default_factory=ScoreStats)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "batches": self.batches,
            "read_s": round(self.read_s, 4),
            "preprocess_s": round(self.preprocess_s, 4),
            "model_s": round(self.model_s, 4),
            "model_wait_s": round(self.model_wait_s, 4),
            "inbox_depth_avg": round(self.inbox_depth / self.batches, 2) if self.batches else 0.0,
            "outbox_depth_avg": round(self.outbox_depth / self.batches, 2) if self.batches else 0.0,
            "write_s": round(self.write_s, 4),
            "wall_s": round(time.perf_counter() - self.started, 4),
            "lanes": self.lanes,
            "lane_busy_s": round(self.lane_busy_s, 4),
            "split_batches": self.split_batches,
            **({"setup_s": round(self.setup_s, 4)} if self.setup_s is not None else {}),
            "started_at": round(self.started_at, 3),
            "ended_at": round(time.time(), 3),
            **self.scoring.as_dict(),
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
        # pyarrow imports pandas lazily on first use; two pipeline threads doing that at once can see a
        # half-initialised module. Import it here, before the threads start.
        import pandas  # noqa: F401

        spec = config.spec
        source = open_source(spec)
        if config.columns.schema is not None:
            source.use_schema(config.columns.schema)  # as planned: no second listing of the input
        sink = open_sink(spec)
        sink.attempt = config.attempt
        # A pinned process sees its GPU as the only one: cuda:0.
        adapter = load_adapter(spec, threads=config.threads, device=None if config.gpu is None else "cuda:0")
        setup_started = time.perf_counter()
        try:
            adapter.setup()
        except InfermillError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"model setup failed: {type(exc).__name__}: {exc}",
                hint="run `infermill validate JOB --debug` to see the full traceback",
            ) from exc
        setup_s = time.perf_counter() - setup_started
        adapter = accelerated(adapter, spec)  # [model] accelerate: verified (and timed) on the first batch
        events.put(WorkerReady(wid))
        with reusing_arrow_memory():
            _Pipeline(config, source, adapter, sink, events, flags, setup_s).run(next_shard)
        adapter.close()
    except RunAborted:
        pass  # aborted from outside this worker: the coordinator already knows why
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, which decides
        events.put(WorkerFatal(wid, _as_fatal(exc)))
    finally:
        events.put(WorkerExited(wid))


class _Pipeline:
    def __init__(
        self,
        config: WorkerConfig,
        source: Any,
        adapter: ModelAdapter,
        sink: Any,
        events: EventQueue,
        flags: StopFlags,
        setup_s: float | None = None,
    ) -> None:
        self.config = config
        self._setup_s = setup_s
        """Reported once, with the first shard's stats (start-up, apart from the steady state)."""
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
        # Across shards: a broken model fails every batch, whichever shard it belongs to.
        self.streak = FailureStreak.for_spec(self.spec)

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

    def _next(self, q: queue.Queue[Any]) -> Any:
        """The next item from ``q``, or None once the run is aborted."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._aborted():
                    return None

    def _read(self, next_shard: Callable[[], Shard | None]) -> None:
        try:
            columns = self.columns
            batch_size = self.spec.batch.rows()
            window_rows = self.spec.batch.sort_window
            while not self.flags.stop.is_set() and not self._aborted():
                shard = next_shard()
                if shard is None:
                    break
                sid = shard.shard_id
                stats = self.stats[sid] = _ShardStats(setup_s=self._setup_s)
                self._setup_s = None
                if not _put(self.inbox, ("start", shard), self.flags):
                    return
                batches = self.source.read(shard, batch_size, columns.read)
                window: list[pa.RecordBatch] = []
                offset = 0  # shard row index of the window's first row
                read_failed = False
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except InfermillError as exc:
                        _put(self.inbox, ("error", shard, exc), self.flags)
                        read_failed = True
                        break
                    stats.read_s += time.perf_counter() - t0
                    if self._aborted() or self._parent_gone():
                        _put(self.inbox, ("abandon", shard), self.flags)
                        return
                    if sid in self.failed:
                        break
                    if not window_rows:
                        if not self._emit(shard, batch, None, stats):
                            return
                        continue
                    window.append(batch)
                    if sum(b.num_rows for b in window) >= window_rows:
                        if not self._emit_window(shard, window, offset, stats):
                            return
                        offset += sum(b.num_rows for b in window)
                        window = []
                last = window and not read_failed and sid not in self.failed
                if last and not self._emit_window(shard, window, offset, stats):
                    return
                if not _put(self.inbox, ("end", shard), self.flags):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the model loop
            self._fail(exc)
        finally:
            _put(self.inbox, _EOF, self.flags)

    def _emit(self, shard: Shard, batch: pa.RecordBatch, positions: np.ndarray | None, stats: _ShardStats) -> bool:
        """Preprocess one batch and hand it to the model loop (False: the run was aborted)."""
        t0 = time.perf_counter()
        try:
            # Unreadable input rows are left out before the model's preprocessing: the scorer does it.
            skip = batch.schema.get_field_index(INPUT_ERROR) >= 0
            inputs = None if skip else self.adapter.preprocess(batch.select(self.columns.features))
        except Exception as exc:  # noqa: BLE001 - the scorer redoes it row by row
            if classify(exc, self.adapter) == "fatal":
                raise
            inputs = None
        stats.preprocess_s += time.perf_counter() - t0
        return _put(self.inbox, ("batch", shard, batch, inputs, positions), self.flags)

    def _emit_window(self, shard: Shard, window: list[pa.RecordBatch], offset: int, stats: _ShardStats) -> bool:
        """Length bucketing: the window's rows go to the model longest first, so each batch holds rows of
        similar length (little padding); the model loop puts the results back in input order.

        Longest first, as ``SentenceTransformer.encode`` orders: a batch too big for memory shows at the start
        of the window, and the window ends on its quickest batches, so parallel lanes finish together."""
        t0 = time.perf_counter()
        table = concat_batches(window).combine_chunks()
        rows = table.to_batches()[0] if table.num_rows else None
        if rows is None:
            return True
        # Bytes of each row's feature values order texts as their token counts do, closely enough for
        # bucketing, at no cost: counting tokens would tokenize the whole window once more.
        order = np.argsort(-row_bytes(rows.select(self.columns.features)), kind="stable")
        ordered = rows.take(pa.array(order))
        stats.preprocess_s += time.perf_counter() - t0
        size = self.spec.batch.rows()
        for lo in range(0, ordered.num_rows, size):
            if not self._emit(shard, ordered.slice(lo, size), offset + order[lo : lo + size], stats):
                return False
        return _put(self.inbox, ("window_end", shard), self.flags)

    def _parent_gone(self) -> bool:
        # A worker process whose coordinator died (kill -9) must stop: nobody would commit its work.
        return self.config.watch_parent and os.getppid() != self._parent

    def _model_loop(self) -> None:
        lanes = max(1, self.adapter.lanes())
        self._lanes = lanes
        self._local = threading.local()
        self._offsets: dict[str, int] = {}
        self._windows: dict[str, list[tuple[np.ndarray, pa.Table]]] = {}
        # Scored batches and control items, in input order; a batch's entry carries its (future) results,
        # one per piece with the piece's first row (one piece unless it was cut for idle lanes).
        pending: deque[tuple[Any, list[tuple[int, Future[Any]]] | None]] = deque()
        pool = None
        if lanes > 1:
            pool = ThreadPoolExecutor(lanes, thread_name_prefix="infermill-lane", initializer=self.adapter.enter_lane)
        try:
            with self.adapter.lanes_running(lanes):
                while True:
                    # Results that are ready go on now; with every lane busy, wait for the oldest.
                    while pending and (
                        pending[0][1] is None
                        or all(f.done() for _, f in pending[0][1])
                        or sum(len(parts) for _, parts in pending if parts is not None) > lanes
                    ):
                        if not self._hand_on(*pending.popleft()):
                            return
                    t0 = time.perf_counter()
                    item = self._next(self.inbox)
                    if item is None or item[0] == "eof":
                        break
                    sid = item[1].shard_id
                    stats = self.stats.get(sid)
                    if stats is not None:
                        stats.model_wait_s += time.perf_counter() - t0
                    if item[0] != "batch":
                        # Row offsets are counted here, as batches arrive (their results are handed on later).
                        if item[0] == "start":
                            self._offsets[sid] = 0
                        elif item[0] in ("end", "abandon"):
                            self._offsets.pop(sid, None)
                        pending.append((item, None))
                        continue
                    if sid in self.failed:
                        continue
                    if stats is not None:
                        stats.inbox_depth += self.inbox.qsize()
                        stats.outbox_depth += self.outbox.qsize()
                    batch, inputs = item[2], item[3]
                    offset = self._offsets.get(sid, 0)
                    self._offsets[sid] = offset + batch.num_rows
                    entry = (item, offset)
                    if pool is None:
                        done: Future[Any] = Future()
                        try:
                            done.set_result(self._score(batch, inputs))
                        except BaseException as exc:  # noqa: BLE001 - re-raised in input order by _hand_on
                            done.set_exception(exc)
                        pending.append((entry, [(0, done)]))
                        continue
                    bounds = _pieces(batch.num_rows, lanes) if not self._batch_waiting() else [0]
                    if len(bounds) > 1 and stats is not None:
                        stats.split_batches += 1
                    if len(bounds) == 1:
                        pending.append((entry, [(0, pool.submit(self._score, batch, inputs))]))
                        continue
                    ends = [*bounds[1:], batch.num_rows]
                    pending.append((entry, [
                        (lo, pool.submit(self._score, batch.slice(lo, hi - lo), self._piece_inputs(inputs, lo, hi)))
                        for lo, hi in zip(bounds, ends, strict=True)
                    ]))
                while pending and not self._aborted():
                    if not self._hand_on(*pending.popleft()):
                        return
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            _put(self.outbox, _EOF, self.flags)

    def _piece_inputs(self, inputs: Any, start: int, stop: int) -> Any:
        """A piece's share of the batch's preprocessed inputs (None: the lane preprocesses the piece)."""
        if inputs is None:
            return None
        try:
            return self.adapter.slice_inputs(inputs, start, stop)
        except Exception:  # noqa: BLE001 - the piece is preprocessed again instead
            return None

    def _batch_waiting(self) -> bool:
        """Whether the reader has another batch queued for the model loop (peeked, not taken)."""
        with self.inbox.mutex:
            return any(queued[0] == "batch" for queued in self.inbox.queue)

    def _score(self, batch: pa.RecordBatch, inputs: Any) -> tuple[list[pa.Table], list[DeadItem], ScoreStats, float]:
        """Score one batch on this thread's scorer (one per lane: OOM splits adapt per lane)."""
        scorer = getattr(self._local, "scorer", None)
        if scorer is None:
            spec = self.spec
            scorer = self._local.scorer = BatchScorer(
                self.adapter, self.columns, spec.retry, spec.batch.rows(), wait=self._wait_abort,
                max_bytes=spec.batch.max_bytes, max_tokens=spec.batch.max_tokens,
            )
        calls = ScoreStats()
        t0 = time.perf_counter()
        tables, dead = scorer.score(batch, inputs, calls)
        return tables, dead, calls, time.perf_counter() - t0

    def _hand_on(self, entry: Any, result: list[tuple[int, Future[Any]]] | None) -> bool:
        """Pass one batch's results, or one control item, to the writer, in input order (False: aborted)."""
        if result is None:
            return self._control(entry)
        item, offset = entry
        shard: Shard = item[1]
        sid = shard.shard_id
        batch, positions = item[2], item[4]
        tables: list[pa.Table] = []
        dead: list[DeadItem] = []
        calls = ScoreStats()
        seconds = 0.0
        for start, future in result:
            piece_tables, piece_dead, piece_calls, piece_s = future.result()  # a fatal error is raised here, in order
            tables.extend(piece_tables)
            dead.extend(d if start == 0 else replace(d, row=d.row + start) for d in piece_dead)
            calls.merge(piece_calls)
            seconds += piece_s
        stats = self.stats.get(sid)
        if stats is not None:
            stats.model_s += seconds / self._lanes  # lanes overlap: busy time, not the sum of calls
            stats.lane_busy_s += seconds
            stats.lanes = self._lanes
            stats.batches += 1
            stats.scoring.merge(calls)
        broken = self.streak.observe(batch.num_rows, dead)
        if broken is not None:
            raise broken  # fatal, as any: the coordinator stops the run, keeps what is committed, no manifest
        fault_point("after_batch")
        if sid in self.failed:
            return True
        if positions is None:
            for table in tables:
                if not _put(self.outbox, ("batch", shard, table), self.flags):
                    return False
        else:
            # Bucketed: hold the window's results until it is complete, to restore input order.
            failed_rows = np.zeros(batch.num_rows, dtype=bool)
            failed_rows[[d.row for d in dead]] = True
            if tables:
                scored = pa.concat_tables(tables, promote_options="default")
                self._windows.setdefault(sid, []).append((positions[~failed_rows], scored))
        if dead:
            where = [int(positions[d.row]) if positions is not None else offset + d.row for d in dead]
            table, records = dead_letter_table(self.spec, self.columns, batch, dead, where)
            if not _put(self.outbox, ("errors", shard, table, records), self.flags):
                return False
        return True

    def _control(self, item: Any) -> bool:
        kind = item[0]
        shard: Shard = item[1]
        sid = shard.shard_id
        if kind == "start":
            self.events.put(ShardStarted(self.config.worker_id, sid))
            return _put(self.outbox, item, self.flags)
        if kind == "window_end":
            held = self._windows.pop(sid, [])
            if held and sid not in self.failed:
                order = np.argsort(np.concatenate([p for p, _ in held]), kind="stable")
                restored = pa.concat_tables([t for _, t in held], promote_options="default").take(pa.array(order))
                return _put(self.outbox, ("batch", shard, restored), self.flags)
            return True
        if kind == "error":
            self._shard_failed(shard, item[2])
            return True
        # end, abandon
        self._windows.pop(sid, None)
        return _put(self.outbox, item, self.flags)

    def _wait_abort(self, seconds: float) -> bool:
        """Sleep between retries; True when the run was aborted meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._aborted():
                return True
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self._aborted()

    def _shard_failed(self, shard: Shard, exc: BaseException) -> None:
        sid = shard.shard_id
        if sid in self.failed:
            return
        self.failed.add(sid)
        detail = "".join(traceback.format_exception(exc, limit=6))
        self.events.put(ShardFailed(self.config.worker_id, sid, _describe(exc), detail))
        _put(self.outbox, ("abandon", shard), self.flags)

    def _write(self) -> None:
        writers: dict[str, ShardWriter] = {}
        error_writers: dict[str, ShardWriter] = {}
        records: dict[str, list[tuple[Any, ...]]] = {}
        try:
            while True:
                item = self._next(self.outbox)
                if item is None or item[0] == "eof":
                    break
                kind = item[0]
                shard: Shard = item[1]
                sid = shard.shard_id
                if kind == "start":
                    writers[sid] = self.sink.open_writer(shard.ordinal)
                    records[sid] = []
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
                    self.events.put(Progress(self.config.worker_id, table.num_rows))
                elif kind == "errors":
                    if sid in self.failed or sid not in writers:
                        continue
                    if sid not in error_writers:
                        error_writers[sid] = self.sink.open_writer(shard.ordinal, errors=True)
                    error_writers[sid].write(item[2])
                    records[sid].extend(item[3])
                    self.events.put(Progress(self.config.worker_id, item[2].num_rows))
                elif kind in ("abandon", "end"):
                    writer = writers.pop(sid, None)
                    errors = error_writers.pop(sid, None)
                    dead = records.pop(sid, [])
                    if kind == "abandon" or writer is None or sid in self.failed:
                        for w in (writer, errors):
                            if w is not None:
                                w.abort()
                        continue
                    staged = writer.close()
                    staged_errors = errors.close() if errors is not None else None
                    fault_point("after_stage")
                    stats = self.stats.pop(sid, None)
                    self.events.put(
                        ShardStaged(
                            self.config.worker_id, sid, staged, staged_errors, dead,
                            {**stats.as_dict(), "worker": self.config.worker_id, **shard_facts(self.adapter)}
                            if stats
                            else {},
                        )
                    )
        except BaseException as exc:  # noqa: BLE001 - handed to the model loop
            self._fail(exc)
            _abort_flag(self.flags)
        finally:
            for writer in [*writers.values(), *error_writers.values()]:
                writer.abort()


def dead_letter_table(
    spec: JobSpec, columns: Columns, batch: pa.RecordBatch, dead: list[DeadItem], positions: list[int]
) -> tuple[pa.Table, list[tuple[Any, ...]]]:
    """Dead-letter rows for the errors file, and their records for the ledger.

    ``positions`` are the items' row indexes within their shard (``_row``), one per dead item.
    """
    rows = pa.array([d.row for d in dead], pa.int64())
    ids = batch.column(columns.id).take(rows)
    table: dict[str, Any] = {
        columns.id: ids,
        "_error_kind": pa.array([d.kind for d in dead], pa.string()),
        "_error_class": pa.array([d.error_class for d in dead], pa.string()),
        "_error_message": pa.array([d.message for d in dead], pa.string()),
        "_error_traceback": pa.array([d.traceback for d in dead], pa.string()),
        "_attempts": pa.array([d.attempts for d in dead], pa.int32()),
        "_row": pa.array(positions, pa.int64()),
    }
    if spec.errors.include_input:
        for name in [*columns.features, *columns.keep]:
            if name not in table:
                table[name] = batch.column(name).take(rows)
    records = [
        (
            str(item_id) if item_id is not None or d.item_id is None else d.item_id,
            position, d.attempts, d.error_class, d.kind, d.message, d.traceback,
        )
        for item_id, position, d in zip(ids.to_pylist(), positions, dead, strict=True)
    ]
    return pa.table(table), records


def _pieces(rows: int, lanes: int) -> list[int]:
    """The first rows of the contiguous pieces a batch of ``rows`` is cut into for ``lanes`` idle lanes:
    as even as can be, each of at least MIN_PIECE_ROWS rows (one piece: ``[0]``)."""
    count = max(1, min(lanes, rows // MIN_PIECE_ROWS))
    return [rows * i // count for i in range(count)]


def _abort_flag(flags: StopFlags) -> None:
    setter = getattr(flags.abort, "set", None)
    if setter is not None:
        setter()
