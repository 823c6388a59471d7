"""Arrow feature columns to numpy, shared by the sklearn and onnx adapters.

Columns are converted straight into a preallocated 2-D array, so each value is copied once (Arrow buffers
are read zero-copy where the type allows). The copy goes in blocks of rows: writing a whole column into a
C-ordered array touches one cache line per row, and a batch larger than the CPU cache would then be
pulled through memory once per column (5x the cost at 64k rows x 20 columns).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError

__all__ = ["MatrixPool", "check_numeric", "column_values", "feature_matrix"]

BLOCK_BYTES = 256 * 1024
"""Rows are copied in blocks of about this many bytes of output, which stay in the CPU's cache."""
MIN_BLOCK_ROWS = 512
"""...but at least this many rows a block, so a very wide table is not copied a few values per call."""


def check_numeric(schema: pa.Schema, kind: str, *, hint: str | None = None) -> None:
    """Raise ModelLoadError unless every feature column is numeric or boolean."""
    for field in schema:
        t = field.type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
            or pa.types.is_null(t)
        ):
            raise ModelLoadError(
                f"feature '{field.name}' has type {t}, but model kind '{kind}' takes numeric features",
                hint=hint or "encode it as numbers before scoring, or leave it out of 'model.features'",
            )


def column_values(column: pa.Array, name: str, dtype: np.dtype[np.generic]) -> np.ndarray:
    """One column as a 1-D numpy array assignable to ``dtype`` (nulls become NaN for float targets)."""
    t = column.type
    floating_target = dtype.kind in "fc"
    if pa.types.is_floating(t) and (floating_target or column.null_count == 0):
        return _numpy(column)
    if column.null_count and not floating_target:
        raise ItemError(f"feature '{name}' has {column.null_count} null value(s); the model input is {dtype}")
    if (pa.types.is_integer(t) or pa.types.is_boolean(t)) and column.null_count == 0:
        return _numpy(column)
    if dtype.kind == "O":
        return _numpy(column)
    # Nullable ints/bools, decimals and all-null columns: Arrow casts, nulls become NaN.
    return _numpy(column.cast(pa.float64()))


class MatrixPool:
    """Memory for feature matrices, used again once nothing refers to a matrix any more.

    A fresh matrix per batch costs more than the copy into it: the allocator gives a freed block of
    megabytes back to the OS, and the kernel zeroes every page of the next block as it is first written
    (numpy asks for 2 MiB huge pages for blocks of 4 MiB and more). A buffer is free when the pool holds
    the only reference to it. Every numpy view, slice or reshape of a matrix refers to the buffer (numpy
    keeps a view's base alive), so a matrix the engine still holds for a retry, or that a model keeps, is
    never handed out twice.

    >>> pool = MatrixPool()
    >>> a = pool.empty((2, 3), np.dtype(np.float64))
    >>> b = pool.empty((2, 3), np.dtype(np.float64))   # ``a`` is alive: another buffer
    >>> a.ctypes.data != b.ctypes.data
    True
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        """At most this many buffers stay in the pool (about as many as batches in flight)."""
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        # The reference count of a buffer that only the pool holds, as _refs sees it (the count a
        # call adds differs between Python versions, so it is measured rather than assumed).
        self._buffers.append(np.empty(0, np.uint8))
        self._idle = self._refs(0)
        self._buffers.clear()

    def _refs(self, index: int) -> int:
        return sys.getrefcount(self._buffers[index])

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> np.ndarray:
        """An uninitialised C-ordered array of ``shape`` and ``dtype`` (not object), like ``np.empty``."""
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            fits: int | None = None
            spare: int | None = None
            for i in range(len(self._buffers)):
                if self._refs(i) > self._idle:
                    continue
                size = self._buffers[i].nbytes
                if size >= nbytes and (fits is None or size < self._buffers[fits].nbytes):
                    fits = i
                elif size < nbytes and spare is None:
                    spare = i
            if fits is not None:
                buffer = self._buffers[fits]
            else:
                buffer = np.empty(nbytes, np.uint8)
                if spare is not None:
                    self._buffers[spare] = buffer  # too small for this batch: make room for a bigger one
                elif len(self._buffers) < self.keep:
                    self._buffers.append(buffer)
        return buffer[:nbytes].view(dtype).reshape(shape)


def feature_matrix(
    batch: pa.RecordBatch,
    dtype: np.dtype[np.generic],
    names: Sequence[str] | None = None,
    pool: MatrixPool | None = None,
) -> np.ndarray:
    """The batch as a C-ordered ``(rows, columns)`` array of ``dtype``, in memory from ``pool`` if given."""
    names = list(names) if names is not None else batch.schema.names
    rows, width = batch.num_rows, batch.num_columns
    if pool is not None and not dtype.hasobject:
        out = pool.empty((rows, width), dtype)
    else:
        out = np.empty((rows, width), dtype=dtype)
    values = [column_values(batch.column(i), names[i], dtype) for i in range(width)]
    step = max(MIN_BLOCK_ROWS, BLOCK_BYTES // max(1, width * out.itemsize))
    for lo in range(0, rows, step):
        block = out[lo : lo + step]
        for i, column in enumerate(values):
            block[:, i] = column[lo : lo + step]
    return out


def _numpy(column: pa.Array) -> np.ndarray:
    values: np.ndarray = column.to_numpy(zero_copy_only=False)
    return values
