"""Scoring one batch under the error policy: retry, bisect, split on OOM, dead-letter what is left.

A batch is scored in calls of at most ``limit`` rows (shrunk on OOM, grown back after good calls) and,
with ``[batch] max_bytes`` / ``max_tokens``, of at most that many bytes / tokens (``batching``).
``BatchScorer.score`` never raises for a bad item: it returns the scored rows (in input order, as output
tables) and the rows it gave up on, each with its error. It raises only for fatal errors.

A call that raises :class:`~infermill.errors.PartialBatchError` (a remote model that answered some rows
and not others) keeps its answered rows; the failed rows are then handled by their own errors, grouped
by class, as if a call of just those rows had failed: transient ones retried together, item errors
bisected, and each row that is given up on dead-lettered with its own message.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from ..backoff import full_jitter
from ..errors import PartialBatchError
from ..models.base import ModelAdapter
from ..sources.base import INPUT_ERROR
from ..spec import RetrySpec
from .batching import budget_end, cumulative, row_bytes, token_estimate
from .columns import Columns
from .policy import ErrorKind, classify

__all__ = ["BatchScorer", "DeadItem", "RunAborted", "ScoreStats"]

TRACEBACK_CHARS = 2_000
GROW_AFTER = 4
"""Successful calls at a reduced batch size before the size doubles again."""


@dataclass(frozen=True)
class DeadItem:
    """A row the model could not score, with why."""

    row: int
    """Index of the row in the batch given to ``score``."""
    kind: ErrorKind
    error_class: str
    message: str
    traceback: str
    attempts: int
    item_id: str | None = None
    """The id to record when the row's id column holds none (an unreadable input row: file and offset)."""


@dataclass
class ScoreStats:
    calls: int = 0
    retries: int = 0
    bisections: int = 0
    oom_splits: int = 0
    min_batch: int | None = None
    batch_sizes: list[int] = field(default_factory=list)

    def merge(self, other: ScoreStats) -> None:
        """Add ``other``'s counts (one batch's, scored on a lane) to these."""
        self.calls += other.calls
        self.retries += other.retries
        self.bisections += other.bisections
        self.oom_splits += other.oom_splits
        if other.min_batch is not None:
            self.min_batch = other.min_batch if self.min_batch is None else min(self.min_batch, other.min_batch)
        self.batch_sizes.extend(other.batch_sizes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "bisections": self.bisections,
            "oom_splits": self.oom_splits,
            "min_batch": self.min_batch,
        }


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _short_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc, limit=5))
    return text if len(text) <= TRACEBACK_CHARS else "..." + text[-TRACEBACK_CHARS:]


def _rows_of(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    """The rows ``rows`` (ascending indexes) of ``batch``: a zero-copy slice when they are contiguous."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return batch.slice(int(rows[0]), len(rows))
    return batch.take(pa.array(rows, pa.int64()))


def _in_input_order(pieces: list[tuple[np.ndarray, pa.Table]]) -> list[pa.Table]:
    """The scored tables in input order (rows kept from a partial call come before retried ones)."""
    tables = [t for _, t in pieces]
    if len(pieces) < 2:
        return tables
    order = np.concatenate([rows for rows, _ in pieces])
    if bool(np.all(np.diff(order) > 0)):
        return tables
    merged = pa.concat_tables(tables, promote_options="default")
    return [merged.take(pa.array(np.argsort(order, kind="stable")))]


class RunAborted(Exception):  # noqa: N818 - a signal to stop, not an error to report
    """Raised out of a retry's wait when the run was aborted meanwhile (another worker's fatal error, a
    grace period over): whoever aborted has reported why, so the worker stops without a report of its own."""


class BatchScorer:
    """Scores batches with one adapter, adapting the call size after out-of-memory errors."""

    def __init__(
        self,
        adapter: ModelAdapter,
        columns: Columns,
        retry: RetrySpec,
        batch_size: int,
        *,
        wait: Callable[[float], bool] | None = None,
        max_bytes: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.adapter = adapter
        self.columns = columns
        self.retry = retry
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.limit = batch_size
        self._good_calls = 0
        self._wait = wait or _sleep
        self._rng = random.Random()

    def _backoff(self, attempt: int) -> float:
        return full_jitter(attempt, self.retry.backoff_seconds, self.retry.max_backoff_seconds, self._rng)

    def _call(self, batch: pa.RecordBatch, inputs: Any) -> pa.Table:
        if inputs is None:
            inputs = self.adapter.preprocess(batch.select(self.columns.features))
        return self._table(batch, self.adapter.predict(inputs))

    def _table(self, batch: pa.RecordBatch, result: Any) -> pa.Table:
        outputs = self.adapter.postprocess(result, batch.num_rows)
        names = [self.columns.id, *self.columns.keep]
        arrays = [batch.column(n) for n in names]
        for name, array in outputs.items():
            names.append(name)
            arrays.append(array)
        return pa.Table.from_arrays(arrays, names=names)

    def _budgets(self, batch: pa.RecordBatch) -> list[tuple[np.ndarray, int]]:
        """Running row sizes and their budget, for each budget set."""
        if self.max_bytes is None and self.max_tokens is None:
            return []
        features = batch.select(self.columns.features)
        nbytes = row_bytes(features)
        out = []
        if self.max_bytes is not None:
            out.append((cumulative(nbytes), self.max_bytes))
        if self.max_tokens is not None:
            out.append((cumulative(token_estimate(self.adapter, features, nbytes)), self.max_tokens))
        return out

    def _succeeded(self, rows: int, stats: ScoreStats, full: bool = False) -> None:
        stats.calls += 1
        # A call cut short by the byte/token budget was as large as allowed: it counts towards growing back.
        if (rows >= self.limit or full) and self.limit < self.batch_size:
            self._good_calls += 1
            if self._good_calls >= GROW_AFTER:
                self.limit = min(self.batch_size, self.limit * 2)
                self._good_calls = 0

    def score(
        self, batch: pa.RecordBatch, inputs: Any = None, stats: ScoreStats | None = None
    ) -> tuple[list[pa.Table], list[DeadItem]]:
        """Score ``batch`` (``inputs``: its preprocessed features, if already done)."""
        stats = stats if stats is not None else ScoreStats()
        index = batch.schema.get_field_index(INPUT_ERROR)
        if index >= 0:
            errors = batch.column(index)
            batch = batch.drop_columns([INPUT_ERROR])
            if errors.null_count < len(errors):
                return self._score_readable(batch, errors, stats)
        return self._score_all(batch, inputs, stats)

    def _score_readable(
        self, batch: pa.RecordBatch, errors: pa.Array, stats: ScoreStats
    ) -> tuple[list[pa.Table], list[DeadItem]]:
        """Score the rows the source could read; dead-letter the others (in row order)."""
        valid = errors.is_valid().to_numpy(zero_copy_only=False)
        good = np.flatnonzero(~valid)
        tables, dead = self._score_all(batch.take(pa.array(good, pa.int64())), None, stats)
        dead = [replace(d, row=int(good[d.row])) for d in dead]
        messages = errors.field("message").to_pylist()
        items = errors.field("item").to_pylist()
        for row in np.flatnonzero(valid):
            dead.append(DeadItem(int(row), "input", "InputError", messages[row], "", 1, items[row]))
        dead.sort(key=lambda d: d.row)
        return tables, dead

    def _score_all(
        self, batch: pa.RecordBatch, inputs: Any, stats: ScoreStats
    ) -> tuple[list[pa.Table], list[DeadItem]]:
        n = batch.num_rows
        pieces: list[tuple[np.ndarray, pa.Table]] = []
        dead: list[DeadItem] = []
        budgets = self._budgets(batch)
        cursor = 0
        while cursor < n:
            # The next chunk at the current limit, which OOM splits shrink and good calls grow back.
            stop = min(n, cursor + self.limit)
            end = stop
            for cum, budget in budgets:
                end = budget_end(cum, cursor, end, budget)
            whole = (cursor, end) == (0, n)
            self._score_range(batch, cursor, end, inputs if whole else None, stats, pieces, dead, end < stop)
            cursor = end
        return _in_input_order(pieces), dead

    def _score_range(
        self,
        batch: pa.RecordBatch,
        start: int,
        end: int,
        inputs: Any,
        stats: ScoreStats,
        pieces: list[tuple[np.ndarray, pa.Table]],
        dead: list[DeadItem],
        budget_cut: bool = False,
    ) -> None:
        first = np.arange(start, end, dtype=np.int64)
        # Rows to call with (ascending indexes into batch) and the attempt; a retry pushes the same array,
        # so `rows is first` tells the whole range (whose preprocessed inputs are reused).
        stack: list[tuple[np.ndarray, int]] = [(first, 1)]
        while stack:
            rows, attempt = stack.pop()
            sub = _rows_of(batch, rows)
            try:
                table = self._call(sub, inputs if rows is first else None)
            except PartialBatchError as exc:
                try:
                    self._keep_answered(exc, sub, rows, stats, pieces)
                except Exception as unusable:  # noqa: BLE001 - the answers cannot be used: the call failed
                    self._failed(rows, [unusable] * len(rows), attempt, stats, stack, dead)
                    continue
                by_kind: dict[ErrorKind, list[int]] = {}
                for i in sorted(exc.errors):
                    by_kind.setdefault(classify(exc.errors[i], self.adapter), []).append(i)
                for idx in by_kind.values():
                    group = rows if len(idx) == len(rows) else rows[idx]
                    self._failed(group, [exc.errors[i] for i in idx], attempt, stats, stack, dead)
                continue
            except Exception as exc:  # noqa: BLE001 - every failure is classified in _failed
                self._failed(rows, [exc] * len(rows), attempt, stats, stack, dead)
                continue
            self._succeeded(len(rows), stats, budget_cut and rows is first)
            pieces.append((rows, table))

    def _keep_answered(
        self,
        exc: PartialBatchError,
        sub: pa.RecordBatch,
        rows: np.ndarray,
        stats: ScoreStats,
        pieces: list[tuple[np.ndarray, pa.Table]],
    ) -> None:
        """Keep the rows a partial call answered."""
        bad = sorted(exc.errors)
        if not bad or bad[0] < 0 or bad[-1] >= len(rows):
            raise TypeError(f"PartialBatchError.errors must name failed rows 0..{len(rows) - 1}, got {bad[:5]}")
        answered = np.setdiff1d(np.arange(len(rows), dtype=np.int64), np.array(bad, dtype=np.int64))
        if len(answered):
            pieces.append((rows[answered], self._table(_rows_of(sub, answered), exc.result)))
            stats.calls += 1

    def _failed(
        self,
        rows: np.ndarray,
        errors: list[BaseException],
        attempt: int,
        stats: ScoreStats,
        stack: list[tuple[np.ndarray, int]],
        dead: list[DeadItem],
    ) -> None:
        """Apply the error policy to a call of ``rows`` that failed (``errors``: one per row, all of one
        class): retry, bisect, split, or dead-letter each row with its own error. Raises when fatal."""
        kind = classify(errors[0], self.adapter)
        if kind == "fatal":
            raise errors[0]
        size = len(rows)
        if kind == "transient" and attempt < self.retry.max_attempts:
            stats.retries += 1
            if self._wait(self._backoff(attempt)):
                raise RunAborted("the run was aborted while a call waited for its retry") from errors[0]
            stack.append((rows, attempt + 1))
            return
        if kind in ("item", "oom") and size > 1:
            mid = size // 2
            if kind == "oom":
                stats.oom_splits += 1
                self.limit = max(1, min(self.limit, size // 2))
                self._good_calls = 0
                stats.min_batch = min(stats.min_batch or self.limit, self.limit)
            else:
                stats.bisections += 1
            stack.append((rows[mid:], 1))
            stack.append((rows[:mid], 1))
            return
        texts: dict[int, tuple[str, str]] = {}
        for row, error in zip(rows, errors, strict=True):
            if id(error) not in texts:
                texts[id(error)] = (str(error) or type(error).__name__, _short_traceback(error))
            message, text = texts[id(error)]
            dead.append(DeadItem(int(row), kind, type(error).__name__, message, text, attempt))
