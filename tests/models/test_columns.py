"""Arrow feature columns to a 2-D numpy array (the sklearn and onnx adapters' input)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermill.errors import ItemError
from infermill.models import _columns
from infermill.models._columns import feature_matrix


def _batch(rows: int, width: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(width):
        kind = i % 4
        if kind == 0:
            arrays.append(pa.array(rng.standard_normal(rows)))
        elif kind == 1:
            arrays.append(pa.array(rng.standard_normal(rows).astype(np.float32)))
        elif kind == 2:
            arrays.append(pa.array(rng.integers(-5, 5, rows)))
        else:
            arrays.append(pa.array(rng.random(rows) < 0.5))
    return pa.RecordBatch.from_arrays(arrays, names=[f"c{i}" for i in range(width)])


def _expected(batch: pa.RecordBatch, dtype: type) -> np.ndarray:
    return np.column_stack([c.to_numpy(zero_copy_only=False).astype(dtype) for c in batch.columns])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 5000), width=st.integers(1, 40), block=st.sampled_from([64, 1024, 256 * 1024]))
def test_blocked_copy_equals_column_stack(rows: int, width: int, block: int) -> None:
    batch = _batch(rows, width)
    saved = _columns.BLOCK_BYTES, _columns.MIN_BLOCK_ROWS
    _columns.BLOCK_BYTES, _columns.MIN_BLOCK_ROWS = block, 1
    try:
        out = feature_matrix(batch, np.dtype(np.float64))
    finally:
        _columns.BLOCK_BYTES, _columns.MIN_BLOCK_ROWS = saved
    assert out.shape == (rows, width)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, _expected(batch, np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sliced_batches_and_dtypes(dtype: type) -> None:
    batch = _batch(70_000, 20).slice(12_345, 50_000)
    out = feature_matrix(batch, np.dtype(dtype))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, _expected(batch, dtype))


def test_nulls_become_nan_in_float_and_fail_in_int() -> None:
    batch = pa.RecordBatch.from_pydict({"a": pa.array([1, None, 3]), "b": pa.array([0.5, 1.5, None])})
    out = feature_matrix(batch, np.dtype(np.float64))
    np.testing.assert_array_equal(out, [[1.0, 0.5], [np.nan, 1.5], [3.0, np.nan]])
    with pytest.raises(ItemError, match="'a' has 1 null"):
        feature_matrix(batch, np.dtype(np.int64))
