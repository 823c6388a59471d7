"""Arrow feature columns to a 2-D numpy array (the sklearn and onnx adapters' input)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermill.errors import ItemError
from infermill.models import _columns
from infermill.models._columns import MatrixPool, feature_matrix


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


# -- MatrixPool: memory reused across batches, never while anything still refers to it ---------------

F64 = np.dtype(np.float64)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_pool_reuses_a_matrix_once_it_is_dropped() -> None:
    pool = MatrixPool()
    first = pool.empty((1000, 20), F64)
    address = _address(first)
    del first
    again = pool.empty((1000, 20), F64)
    assert _address(again) == address
    assert again.shape == (1000, 20) and again.dtype == F64 and again.flags.c_contiguous and again.flags.writeable


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a,  # the matrix itself
        lambda a: a[10:20],  # a slice (its base is the pooled buffer)
        lambda a: a.T,  # a transposed view
        lambda a: a.reshape(-1),
        lambda a: [a],  # held in a container, as the engine holds a batch for a retry
        lambda a: memoryview(a),
    ],
    ids=["matrix", "slice", "transpose", "reshape", "list", "memoryview"],
)
def test_pool_never_hands_out_memory_that_something_still_refers_to(keep: object) -> None:
    pool = MatrixPool()
    first = pool.empty((1000, 20), F64)
    first[:] = 1.0
    held = keep(first)  # type: ignore[operator]
    address = _address(first)
    del first
    second = pool.empty((1000, 20), F64)
    second_address = _address(second)
    assert second_address != address
    second[:] = 2.0
    assert (np.asarray(held) == 1.0).all()  # the held data was not overwritten
    del held, second
    # Nothing refers to either buffer now: both are reused.
    third, fourth = pool.empty((1000, 20), F64), pool.empty((1000, 20), F64)
    assert {_address(third), _address(fourth)} == {address, second_address}


def test_pool_gives_a_smaller_batch_a_bigger_free_buffer_and_replaces_one_too_small() -> None:
    pool = MatrixPool()
    big = pool.empty((1000, 20), F64)
    address = _address(big)
    del big
    small = pool.empty((10, 20), np.dtype(np.float32))  # fits in the free 160,000-byte buffer
    assert _address(small) == address and small.shape == (10, 20) and small.dtype == np.float32
    del small
    bigger = pool.empty((5000, 20), F64)  # too big for the free buffer: it takes that buffer's place
    assert len(pool._buffers) == 1 and pool._buffers[0].nbytes == 5000 * 20 * 8
    assert _address(bigger) == _address(pool._buffers[0])


def test_pool_keeps_at_most_keep_buffers_and_still_allocates_beyond() -> None:
    pool = MatrixPool(keep=2)
    alive = [pool.empty((100, 5), F64) for _ in range(4)]
    assert len({_address(a) for a in alive}) == 4
    assert len(pool._buffers) == 2


def test_feature_matrix_from_a_pool_equals_a_fresh_one_every_batch() -> None:
    pool = MatrixPool()
    outs = []
    for seed in range(5):
        batch = _batch(3000 - 100 * seed, 12, seed)
        out = feature_matrix(batch, F64, pool=pool)
        np.testing.assert_array_equal(out, _expected(batch, np.float64))
        np.testing.assert_array_equal(out, feature_matrix(batch, F64))
        outs.append(out.copy())
        del out  # done with the batch: its buffer is free for the next one
    assert len(pool._buffers) == 1


def test_feature_matrix_does_not_pool_object_arrays() -> None:
    pool = MatrixPool()
    batch = pa.RecordBatch.from_pydict({"a": ["x", "y"], "b": ["z", "w"]})
    out = feature_matrix(batch, np.dtype(object), pool=pool)
    assert out.tolist() == [["x", "z"], ["y", "w"]]
    assert pool._buffers == []
