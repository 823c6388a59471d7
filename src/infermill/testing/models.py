"""Test helpers for models: an echo model and the conformance suite every model adapter runs.

A model adapter gets the whole contract tested by subclassing :class:`ModelAdapterConformance` and
saying how to build a model (trained for real, written under ``tmp_path``)::

    class TestMyAdapter(ModelAdapterConformance):
        def make_spec(self, tmp_path):
            save_my_model(tmp_path / "model.bin", train_on(conformance_batch()))
            return model_spec_for(tmp_path, ModelSpec(kind="mine", path="model.bin"))

        def change_model(self, spec):                       # optional: enables the fingerprint test
            save_my_model(spec.resolve("model.bin"), a_different_model())

:class:`EchoModel` is a ``kind = "python"`` model that returns a feature column, for engine tests that
need a model but not a real one (``make_python_spec()`` builds its spec).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InfermillError, ItemError
from ..models import load_adapter
from ..models.base import ModelAdapter
from ..spec import InputSpec, JobSpec, ModelSpec, OutputSpec

__all__ = [
    "EchoModel",
    "ModelAdapterConformance",
    "conformance_batch",
    "echo",
    "make_python_spec",
    "model_spec_for",
]


def conformance_batch(
    rows: int = 64, features: Sequence[str] = ("f0", "f1", "f2"), seed: int = 0
) -> pa.RecordBatch:
    """A deterministic batch of float64 feature columns (what the suite scores by default)."""
    rng = np.random.default_rng(seed)
    return pa.RecordBatch.from_arrays(
        [pa.array(rng.normal(size=rows)) for _ in features], names=list(features)
    )


def model_spec_for(base_dir: str | Path, model: ModelSpec) -> JobSpec:
    """A job spec around ``model``, with placeholder input and output, relative to ``base_dir``."""
    return JobSpec(
        input=InputSpec(path="x.parquet"),
        model=model,
        output=OutputSpec(path="out"),
        base_dir=str(base_dir),
    )


def make_python_spec(
    base_dir: str | Path = ".", entrypoint: str = "infermill.testing.models:EchoModel", **model: Any
) -> JobSpec:
    """A spec for a ``kind = "python"`` model (default: :class:`EchoModel`); ``model`` holds more
    :class:`~infermill.spec.ModelSpec` fields, e.g. ``options={"column": "f1"}``."""
    # The kind's keys (entrypoint, options, batch_format) go into ``settings`` (ModelSpec takes them as keywords).
    return model_spec_for(base_dir, ModelSpec("python", **{"entrypoint": entrypoint, **model}))


def _column(batch: Any, name: str | None) -> Any:
    if isinstance(batch, pa.RecordBatch):
        return batch.column(name or batch.schema.names[0])
    if isinstance(batch, dict):
        return batch[name or next(iter(batch))]
    return batch[name or batch.columns[0]]  # pandas DataFrame


class EchoModel:
    """Returns one feature column (default: the first) as the prediction, ``* scale + offset``.

    Works with every ``batch_format``. Rows whose value is in ``fail_on`` make ``predict`` raise
    :class:`~infermill.errors.ItemError`, to exercise the engine's failure handling.
    """

    def __init__(
        self, column: str | None = None, scale: float = 1.0, offset: float = 0.0, fail_on: Sequence[Any] = ()
    ) -> None:
        self.column = column
        self.scale = scale
        self.offset = offset
        self.fail_on = list(fail_on)
        self.ready = False
        self.calls = 0

    def setup(self) -> None:
        self.ready = True

    def predict(self, batch: Any) -> Any:
        self.calls += 1
        values = _column(batch, self.column)
        array = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else np.asarray(values)
        if self.fail_on:
            bad = np.isin(array, self.fail_on)
            if bad.any():
                value = array[bad][0]
                value = value.item() if isinstance(value, np.generic) else value
                raise ItemError(f"EchoModel refuses the value {value!r} (fail_on)")
        if self.scale == 1.0 and self.offset == 0.0:
            return values
        return array * self.scale + self.offset


def echo(batch: Any) -> Any:
    """A function model: the first feature column."""
    return _column(batch, None)


class ModelAdapterConformance(ABC):
    """The model adapter contract as tests. Subclass it in a ``Test*`` class and implement
    :meth:`make_spec`; override :meth:`make_batch` for other features and :meth:`change_model` to test
    that the fingerprint follows the model."""

    threads: int = 1
    """Threads given to the adapter."""
    rtol: float = 1e-6
    atol: float = 1e-9
    """Tolerances for floating-point outputs (native libraries may block work differently per size)."""
    supports_empty_batch: bool = True
    """False when the adapter documents that it rejects an empty batch (with an InfermillError)."""

    @abstractmethod
    def make_spec(self, tmp_path: Path) -> JobSpec:
        """Create the model under ``tmp_path`` and return a spec for it (``base_dir = tmp_path``)."""

    def make_batch(self) -> pa.RecordBatch:
        """Feature columns to score: several rows, not all alike."""
        return conformance_batch()

    def change_model(self, spec: JobSpec) -> None:
        """Change the model behind ``spec`` (weights or code) in place. Default: the test is skipped."""
        raise NotImplementedError

    def make_adapter(self, spec: JobSpec) -> ModelAdapter:
        return load_adapter(spec, threads=self.threads)

    # -- helpers --------------------------------------------------------------------------------
    def _ready(self, tmp_path: Path) -> ModelAdapter:
        adapter = self.make_adapter(self.make_spec(tmp_path))
        adapter.setup()
        return adapter

    @staticmethod
    def score(adapter: ModelAdapter, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Run one batch through preprocess, predict and postprocess, as the engine does."""
        return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)

    def assert_same(self, got: dict[str, pa.Array], expected: dict[str, pa.Array]) -> None:
        """Same columns, types and values (floats within ``rtol``/``atol``)."""
        assert list(got) == list(expected)
        for name in expected:
            a, b = got[name], expected[name]
            assert a.type == b.type, f"output '{name}': type {a.type} != {b.type}"
            assert len(a) == len(b), f"output '{name}': {len(a)} values != {len(b)}"
            flat_a, flat_b = _flat(a), _flat(b)
            if pa.types.is_floating(flat_b.type):
                np.testing.assert_allclose(
                    flat_a.to_numpy(zero_copy_only=False),
                    flat_b.to_numpy(zero_copy_only=False),
                    rtol=self.rtol,
                    atol=self.atol,
                    err_msg=f"output '{name}'",
                )
            else:
                assert flat_a.to_pylist() == flat_b.to_pylist(), f"output '{name}' differs"

    # -- the contract ---------------------------------------------------------------------------
    def test_setup_gives_one_value_per_row_per_output(self, tmp_path: Path) -> None:
        adapter = self._ready(tmp_path)
        outputs = adapter.outputs
        assert outputs and all(isinstance(n, str) for n in outputs) and len(set(outputs)) == len(outputs)
        batch = self.make_batch()
        assert batch.num_rows >= 4, "make_batch must give a few rows for the suite to mean anything"
        result = self.score(adapter, batch)
        assert list(result) == outputs
        for name, column in result.items():
            assert isinstance(column, pa.Array), f"output '{name}' is a {type(column).__name__}"
            assert len(column) == batch.num_rows

    def test_outputs_follow_input_order(self, tmp_path: Path) -> None:
        adapter = self._ready(tmp_path)
        batch = self.make_batch()
        whole = self.score(adapter, batch)
        order = pa.array(np.arange(batch.num_rows)[::-1])
        reversed_ = self.score(adapter, batch.take(order))
        self.assert_same(reversed_, {n: c.take(order) for n, c in whole.items()})

    def test_single_rows_match_the_batch(self, tmp_path: Path) -> None:
        adapter = self._ready(tmp_path)
        batch = self.make_batch()
        whole = self.score(adapter, batch)
        for i in range(min(4, batch.num_rows)):
            self.assert_same(
                self.score(adapter, batch.slice(i, 1)), {n: c.slice(i, 1) for n, c in whole.items()}
            )

    def test_deterministic(self, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path)
        batch = self.make_batch()
        first = self.make_adapter(spec)
        first.setup()
        once = self.score(first, batch)
        self.assert_same(self.score(first, batch), once)
        second = self.make_adapter(spec)
        second.setup()
        self.assert_same(self.score(second, batch), once)

    def test_batch_split_invariance(self, tmp_path: Path) -> None:
        adapter = self._ready(tmp_path)
        batch = self.make_batch()
        whole = self.score(adapter, batch)
        for cut in (batch.num_rows // 2, 1):
            head = self.score(adapter, batch.slice(0, cut))
            tail = self.score(adapter, batch.slice(cut))
            joined = {n: pa.concat_arrays([head[n], tail[n]]) for n in head}
            self.assert_same(joined, whole)

    def test_empty_batch(self, tmp_path: Path) -> None:
        adapter = self._ready(tmp_path)
        batch = self.make_batch()
        empty = batch.slice(0, 0)
        if not self.supports_empty_batch:
            import pytest

            with pytest.raises(InfermillError):
                self.score(adapter, empty)
            return
        result = self.score(adapter, empty)
        whole = self.score(adapter, batch)
        assert list(result) == list(whole)
        for name, column in result.items():
            assert len(column) == 0
            assert column.type == whole[name].type, f"output '{name}': empty batch gives {column.type}"

    def test_fingerprint_is_stable_without_setup(self, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path)
        first = self.make_adapter(spec).fingerprint()
        assert isinstance(first, str) and first
        again = self.make_adapter(spec)
        assert again.fingerprint() == first
        again.setup()
        assert again.fingerprint() == first

    def test_fingerprint_follows_the_model(self, tmp_path: Path) -> None:
        import pytest

        spec = self.make_spec(tmp_path)
        before = self.make_adapter(spec).fingerprint()
        try:
            self.change_model(spec)
        except NotImplementedError:
            pytest.skip("change_model() is not implemented for this adapter")
        assert self.make_adapter(spec).fingerprint() != before


def _flat(array: pa.Array) -> pa.Array:
    while pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type):
        array = array.flatten()
    return array
