"""How many rows a run will see, when the plan knows only bytes.

Parquet shards know their rows from the file footers, so their total is exact before anything is read.
CSV and JSONL (and openai-batch) shards are byte ranges: the rows are known only once a shard has been
read. :class:`RowEstimate` turns bytes into rows with the rows per byte of the shards committed so far
(earlier runs included) or, before the first commit, of a sample from the head of the input, and it is
refined with every shard that commits: once all have, it is the exact count.

Example::

    estimate = RowEstimate.of_plan(shards, committed={}, sample=lambda: 0.01)
    estimate.total()              # ~ 1% of the plan's bytes
    estimate.commit(shard_id, 4_096)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import InfermillError
from ..sources.base import Shard
from ..spec import compression_of

__all__ = ["SAMPLE_BYTES", "RowEstimate", "sample_rows_per_byte"]

SAMPLE_BYTES = 1 << 20
"""How much of the first shard is read for the first guess of rows per byte."""


class RowEstimate:
    """The estimated total rows of a plan whose shards are byte ranges."""

    def __init__(
        self,
        shard_bytes: Mapping[str, int],
        committed: Mapping[str, int],
        sample: Callable[[], float | None] | None = None,
    ) -> None:
        self._bytes = dict(shard_bytes)
        self._rows = {sid: rows for sid, rows in committed.items() if sid in self._bytes}
        self._sample = sample
        self._sampled: float | None = None
        self._sample_taken = False

    @classmethod
    def of_plan(
        cls, shards: Sequence[Shard], committed: Mapping[str, int], sample: Callable[[], float | None] | None = None
    ) -> RowEstimate | None:
        """The estimate for ``shards`` (``committed``: rows of the shards already done, by shard id), or None
        when every shard knows its rows (Parquet): then the plan's own total is exact."""
        if all(shard.rows is not None for shard in shards):
            return None
        # A shard without a row count is a run of byte ranges (see Fragment): its size is their sum.
        sizes = {s.shard_id: sum(max(f.stop - f.start, 0) for f in s.fragments) for s in shards}
        return cls(sizes, committed, sample)

    @property
    def exact(self) -> bool:
        """Every shard has committed: :meth:`total` is a count, not an estimate."""
        return len(self._rows) == len(self._bytes)

    def commit(self, shard_id: str, rows: int) -> None:
        """Record the rows (succeeded and dead-lettered) of a shard that committed."""
        if shard_id in self._bytes:
            self._rows[shard_id] = rows

    def total(self) -> int | None:
        """The rows of the whole plan: exact, estimated, or None while nothing is known yet."""
        done_rows = sum(self._rows.values())
        if self.exact:
            return done_rows
        done_bytes = sum(self._bytes[sid] for sid in self._rows)
        rate = done_rows / done_bytes if done_bytes > 0 else self._sample_rate()
        if rate is None:
            return None
        left = sum(size for sid, size in self._bytes.items() if sid not in self._rows)
        return done_rows + round(rate * left)

    def _sample_rate(self) -> float | None:
        if not self._sample_taken:
            self._sample_taken = True
            self._sampled = self._sample() if self._sample is not None else None
        return self._sampled


def sample_rows_per_byte(source: Any, shard: Shard, limit: int = SAMPLE_BYTES) -> float | None:
    """Lines per byte in the first ``limit`` bytes of ``shard``: a first guess for line-based inputs (a CSV
    header or a blank line counts as a row, which the shards that commit correct). None when the source
    cannot open files or the sample holds no whole line."""
    opener = getattr(source, "open_file", None)
    if opener is None or not shard.fragments:
        return None
    fragment = shard.fragments[0]
    if compression_of(fragment.path) is not None:
        return None  # compressed bytes say nothing of lines, and its range is not the decompressed one
    try:
        with opener(fragment.path) as handle:
            handle.seek(fragment.start)
            data = handle.read(max(min(limit, fragment.stop - fragment.start), 0))
    except (OSError, InfermillError):
        return None  # only a progress display depends on it; reading the shard will say what is wrong
    end = data.rfind(b"\n") + 1
    if fragment.start > 0:
        # A range that does not start a file starts mid-line; that line belongs to the range before.
        first = data.find(b"\n") + 1
        data, end = data[first:end], end - first
    lines = data[:end].count(b"\n")
    return lines / end if lines and end > 0 else None
