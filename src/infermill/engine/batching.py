"""Cutting a batch into model calls under a size budget (``[batch] max_bytes`` / ``max_tokens``).

A row's size is measured with pyarrow compute, never row by row in Python: ``row_bytes`` sums the byte
lengths of a row's feature values. The cut is greedy and keeps input order: each call takes rows while
their total stays within the budget (and within the row cap); a single row over budget goes alone, so a
call is never empty.

Example::

    >>> budget_slices(np.array([3, 3, 3, 9, 1]), max_rows=8, budget=6)
    [(0, 2), (2, 3), (3, 4), (4, 5)]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["budget_end", "budget_slices", "cumulative", "row_bytes", "token_estimate"]


def _fixed_width(tp: pa.DataType) -> int | None:
    try:
        bits: int = tp.bit_width
    except ValueError:
        return None
    return max(1, -(-bits // 8))


def _column_bytes(column: pa.Array) -> np.ndarray:
    n = len(column)
    tp = column.type
    if pa.types.is_dictionary(tp):
        return _column_bytes(column.dictionary_decode())
    if pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_binary(tp) or pa.types.is_large_binary(
        tp
    ):
        lengths = pc.fill_null(pc.binary_length(column), 0)
        return np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)
    width = _fixed_width(tp)
    if width is not None:
        return np.full(n, width, dtype=np.int64)
    if pa.types.is_fixed_size_list(tp):
        inner = _fixed_width(tp.value_type)
        if inner is not None:
            return np.full(n, inner * tp.list_size, dtype=np.int64)
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        inner = _fixed_width(tp.value_type)
        if inner is not None:
            lengths = pc.fill_null(pc.list_value_length(column), 0)
            return np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64) * inner
    # Other nested types: the column's buffers shared out evenly (an estimate).
    return np.full(n, column.nbytes // max(1, n), dtype=np.int64)


def row_bytes(features: pa.RecordBatch) -> np.ndarray:
    """Bytes of each row's feature values: strings and binaries their length, fixed-width values their width,
    lists of fixed-width values length x width (nulls count 0 for variable-length values)."""
    sizes = np.zeros(features.num_rows, dtype=np.int64)
    for column in features.columns:
        sizes += _column_bytes(column)
    return sizes


def cumulative(sizes: np.ndarray) -> np.ndarray:
    """``[0, s0, s0 + s1, ...]``: the running totals ``budget_end`` searches."""
    return np.concatenate(([0], np.cumsum(np.asarray(sizes, dtype=np.int64))))


def budget_end(cum: np.ndarray, start: int, stop: int, budget: int) -> int:
    """The end of the call starting at row ``start``: as many rows as fit ``budget`` (by the running totals
    ``cum``), at least one, at most up to ``stop``."""
    end = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1
    return max(start + 1, min(stop, end))


def budget_slices(sizes: np.ndarray, max_rows: int, budget: int) -> list[tuple[int, int]]:
    """``(start, end)`` row ranges covering every row once, in order; each holds at most ``max_rows`` rows
    whose sizes sum to at most ``budget``, except a single row over budget, which goes alone."""
    cum = cumulative(sizes)
    n = len(cum) - 1
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = budget_end(cum, start, min(n, start + max_rows), budget)
        out.append((start, end))
        start = end
    return out


def token_estimate(adapter: Any, features: pa.RecordBatch, nbytes: np.ndarray | None = None) -> np.ndarray:
    """Tokens per row as the adapter counts them (``token_counts``), or about four bytes a token."""
    try:
        tokens = adapter.token_counts(features)
    except Exception:  # noqa: BLE001 - sizes only shape batches; the model calls report bad rows
        tokens = None
    if tokens is None:
        sizes = row_bytes(features) if nbytes is None else nbytes
        return np.asarray(-(-sizes // 4), dtype=np.int64)
    return np.asarray(tokens, dtype=np.int64)
