"""kind = "sklearn": trust, methods and output rules, feature names, threads, and load errors."""

from __future__ import annotations

import pickle
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from infermill.errors import ItemError, ModelLoadError, SpecError
from infermill.models import load_adapter
from infermill.models.sklearn import SklearnModel
from infermill.testing.models import conformance_batch
from tests.models.helpers import (
    FEATURES,
    ThreadProbe,
    boosting,
    forest,
    frame,
    linear,
    logistic,
    multiclass,
    save,
    spec_for,
    training,
)

BATCH = conformance_batch(rows=32)
X = np.column_stack([c.to_numpy() for c in BATCH.columns])


def adapter_for(
    tmp_path: Path, model: Any, *, setup: bool = True, threads: int = 1, **fields: Any
) -> SklearnModel:
    save(model, tmp_path / "model.joblib")
    fields.setdefault("trusted", True)
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="model.joblib", **fields), threads=threads)
    assert isinstance(adapter, SklearnModel)
    if setup:
        adapter.setup()
    return adapter


def score(adapter: Any, batch: pa.RecordBatch = BATCH) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


class Marker:
    """Unpickling this touches a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


# -- trust ----------------------------------------------------------------------------------------
def test_untrusted_pickle_is_refused_without_loading(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Marker(str(marker))))
    with pytest.raises(ModelLoadError) as info:
        load_adapter(spec_for(tmp_path, kind="sklearn", path="evil.pkl"))
    assert "refusing to load evil.pkl" in info.value.message
    assert "pickle/joblib files can run arbitrary code" in info.value.message
    assert "trusted = true in [model]" in str(info.value.hint) and "trust" in str(info.value.hint)
    assert not marker.exists()


def test_fingerprint_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(Marker(str(marker))))
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="m.pkl", trusted=True))
    assert adapter.fingerprint()
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="holds a NoneType, not a fitted scikit-learn estimator"):
        adapter.setup()
    assert marker.exists()  # trusted: loaded on setup


# -- methods and outputs --------------------------------------------------------------------------
def test_predict_proba_is_the_default_and_scores_the_last_class(tmp_path: Path) -> None:
    model = logistic()
    adapter = adapter_for(tmp_path, model)
    assert adapter.method == "predict_proba" and adapter.outputs == ["score"]
    out = score(adapter)
    np.testing.assert_allclose(out["score"].to_numpy(), model.predict_proba(X)[:, 1])


@pytest.mark.parametrize(("positive", "column"), [(0, 0), (1, 1), ("0", 0), ("1", 1)])
def test_positive_class(tmp_path: Path, positive: Any, column: int) -> None:
    model = logistic()
    out = score(adapter_for(tmp_path, model, positive_class=positive, outputs=["p"]))
    np.testing.assert_allclose(out["p"].to_numpy(), model.predict_proba(X)[:, column])


def test_positive_class_with_string_labels(tmp_path: Path) -> None:
    model = logistic(labels="str")
    out = score(adapter_for(tmp_path, model, positive_class="no"))
    np.testing.assert_allclose(out["score"].to_numpy(), model.predict_proba(X)[:, 0])


def test_unknown_positive_class(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, logistic(labels="str"), positive_class="maybe")
    assert "positive_class 'maybe' is not one of the model's classes ['no', 'yes']" in info.value.message


def test_one_output_per_class(tmp_path: Path) -> None:
    model = multiclass()
    out = score(adapter_for(tmp_path, model, outputs=["low", "mid", "high"]))
    expected = model.predict_proba(X)
    for i, name in enumerate(["low", "mid", "high"]):
        np.testing.assert_allclose(out[name].to_numpy(), expected[:, i])


def test_wrong_number_of_outputs_for_the_classes(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, multiclass(), outputs=["a", "b"])
    assert "has 2 names ['a', 'b'], but the model has 3 classes" in info.value.message
    assert "one name per class" in str(info.value.hint)


def test_predict_gives_labels_with_a_stable_type(tmp_path: Path) -> None:
    model = logistic(labels="str")
    adapter = adapter_for(tmp_path, model, method="predict")
    assert adapter.outputs == ["prediction"]
    out = score(adapter)
    assert out["prediction"].to_pylist() == model.predict(X).tolist()
    assert score(adapter, BATCH.slice(0, 0))["prediction"].type == out["prediction"].type == pa.string()


def test_positive_class_does_not_apply_to_predict(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="applies to predict_proba and decision_function"):
        adapter_for(tmp_path, logistic(), method="predict", positive_class=1)


def test_binary_decision_function_and_its_negation(tmp_path: Path) -> None:
    model = logistic()
    expected = model.decision_function(X)
    out = score(adapter_for(tmp_path, model, method="decision_function"))
    assert list(out) == ["prediction"]
    np.testing.assert_allclose(out["prediction"].to_numpy(), expected)
    flipped = score(adapter_for(tmp_path, model, method="decision_function", positive_class=0))
    np.testing.assert_allclose(flipped["prediction"].to_numpy(), -expected)
    with pytest.raises(ModelLoadError, match="binary decision_function gives one score"):
        adapter_for(tmp_path, model, method="decision_function", outputs=["a", "b"])


def test_multiclass_decision_function_follows_the_probability_rules(tmp_path: Path) -> None:
    model = multiclass()
    out = score(adapter_for(tmp_path, model, method="decision_function", positive_class=0, outputs=["d"]))
    np.testing.assert_allclose(out["d"].to_numpy(), model.decision_function(X)[:, 0])


def test_regressor_defaults_to_predict(tmp_path: Path) -> None:
    model = linear()
    adapter = adapter_for(tmp_path, model)
    assert adapter.method == "predict" and adapter.outputs == ["prediction"]
    np.testing.assert_allclose(score(adapter)["prediction"].to_numpy(), model.predict(X))


def test_outputs_before_setup(tmp_path: Path) -> None:
    explicit = adapter_for(tmp_path, logistic(), setup=False, method="predict")
    assert explicit.outputs == ["prediction"] and explicit.estimator is None  # no load needed
    lazy = adapter_for(tmp_path, logistic(), setup=False)
    assert lazy.outputs == ["score"] and lazy.estimator is not None  # loaded to find the default method


def test_method_the_model_lacks(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, linear(), method="predict_proba")
    assert "LinearRegression has no method 'predict_proba'" in info.value.message
    assert "use one of: predict" in str(info.value.hint)


def test_unknown_method_fails_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_adapter(
            spec_for(tmp_path, kind="sklearn", path="absent.joblib", trusted=True, method="transform")
        )
    assert "unknown method 'transform'" in info.value.message and "predict_proba" in str(info.value.hint)


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="invalid \\[model.options\\]"):
        adapter_for(tmp_path, logistic(), options={"input": "polars"})


# -- features -------------------------------------------------------------------------------------
def test_named_model_with_matching_features_does_not_warn(tmp_path: Path) -> None:
    model = boosting()
    adapter = adapter_for(tmp_path, model, features=FEATURES)
    out = score(adapter)  # filterwarnings = error: any sklearn warning fails this test
    np.testing.assert_allclose(out["score"].to_numpy(), boosting().predict_proba(frame(X))[:, 1])


def test_named_pipeline_does_not_warn(tmp_path: Path) -> None:
    x, y, _, _ = training()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame(x), y)
    out = score(adapter_for(tmp_path, model))
    np.testing.assert_allclose(out["score"].to_numpy(), model.predict_proba(frame(X))[:, 1])


def test_feature_order_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, boosting(), features=["f1", "f0", "f2"])
    assert "same names, different order" in info.value.message
    assert "features = ['f0', 'f1', 'f2'] (order matters)" in str(info.value.hint)


def test_feature_names_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, boosting(), features=["f0", "f1", "age"])
    assert "missing ['f2']; not in the model: ['age']" in info.value.message


def test_feature_names_checked_on_the_first_batch_when_not_configured(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, boosting())
    with pytest.raises(ModelLoadError, match="the feature columns \\['f0', 'f2', 'f1'\\] do not match"):
        adapter.preprocess(BATCH.select(["f0", "f2", "f1"]))
    assert len(score(adapter)["score"]) == BATCH.num_rows


def test_feature_count_of_an_unnamed_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="takes 3 features, but got 2 from 'model.features'"):
        adapter_for(tmp_path, logistic(), features=["f0", "f1"])


def test_string_feature_needs_a_dataframe(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, linear())
    batch = pa.RecordBatch.from_pydict({"f0": [1.0], "f1": ["x"], "f2": [0.0]})
    with pytest.raises(ModelLoadError) as info:
        adapter.preprocess(batch)
    assert "feature 'f1' has type string" in info.value.message and 'input = "pandas"' in str(info.value.hint)


def test_column_transformer_gets_a_dataframe_with_strings(tmp_path: Path) -> None:
    x, y, _, _ = training()
    data = frame(x).assign(segment=np.where(x[:, 2] > 0, "a", "b"))
    pre = ColumnTransformer([("num", StandardScaler(), FEATURES), ("cat", OneHotEncoder(), ["segment"])])
    model = make_pipeline(pre, LogisticRegression()).fit(data, y)
    batch = BATCH.append_column("segment", pa.array(np.where(X[:, 2] > 0, "a", "b")))
    adapter = adapter_for(tmp_path, model)
    assert isinstance(adapter.preprocess(batch), pd.DataFrame)
    expected = model.predict_proba(
        frame(X).assign(segment=batch.column("segment").to_numpy(zero_copy_only=False))
    )
    np.testing.assert_allclose(score(adapter, batch)["score"].to_numpy(), expected[:, 1])


def test_pandas_input_option(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, boosting(), options={"input": "pandas"})
    assert isinstance(adapter.preprocess(BATCH), pd.DataFrame)
    assert len(score(adapter)["score"]) == BATCH.num_rows


def test_int_bool_and_null_features(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, boosting(named=False))
    batch = pa.RecordBatch.from_pydict(
        {
            "f0": pa.array([1, None, 3], pa.int64()),
            "f1": [True, False, None],
            "f2": pa.array([0.5, None, 1.0]),
        }
    )
    matrix = adapter.preprocess(batch)
    assert matrix.dtype == np.float64 and matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, [[1, 1, 0.5], [np.nan, 0, np.nan], [3, np.nan, 1.0]])
    assert len(score(adapter, batch)["score"]) == 3  # gradient boosting handles NaN


def test_nan_rejected_by_the_model_is_an_item_error(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, logistic())
    batch = pa.RecordBatch.from_pydict({"f0": [1.0, None], "f1": [0.0, 0.0], "f2": [0.0, 0.0]})
    with pytest.raises(ItemError, match="the model rejected the batch") as info:
        score(adapter, batch)
    assert "NaN" in str(info.value.hint)


# -- threads --------------------------------------------------------------------------------------
def test_native_threads_are_limited_during_predict(tmp_path: Path) -> None:
    probe = ThreadProbe().fit(X, X[:, 0])
    out = score(adapter_for(tmp_path, probe, threads=1))
    assert set(out["prediction"].to_pylist()) == {1.0}


class CallProbe(RegressorMixin, BaseEstimator):
    """Predicts the BLAS/OpenMP thread limits seen while predicting, and records each call's thread and rows."""

    calls: ClassVar[list[tuple[str, int]]] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> CallProbe:
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x: np.ndarray) -> Any:
        from threadpoolctl import threadpool_info

        CallProbe.calls.append((threading.current_thread().name, len(x)))
        most = max(info["num_threads"] for info in threadpool_info())
        return np.full(len(x), float(most))


class ListProbe(CallProbe):
    """Like CallProbe, but returns a list: results that row ranges cannot be joined from."""

    def predict(self, x: np.ndarray) -> Any:
        return list(super().predict(x))


def _limits() -> list[tuple[str, int]]:
    from threadpoolctl import threadpool_info

    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info())


def test_rows_mode_scores_row_ranges_on_single_threaded_threads(tmp_path: Path) -> None:
    CallProbe.calls.clear()
    adapter = adapter_for(tmp_path, CallProbe().fit(X, X[:, 0]), threads=2)
    before = _limits()
    out = score(adapter, conformance_batch(rows=4097))
    assert _limits() == before  # the process-wide BLAS limit is put back after the batch
    assert out["prediction"].to_pylist() == [1.0] * 4097
    assert sorted(rows for _, rows in CallProbe.calls) == [2048, 2049]
    assert all(name.startswith("infermill-sklearn") for name, _ in CallProbe.calls)
    adapter.close()
    assert adapter._pool is None


def test_rows_mode_predictions_equal_one_call(tmp_path: Path) -> None:
    batch = conformance_batch(rows=5000, seed=3)
    split = score(adapter_for(tmp_path, boosting(named=False), threads=2), batch)["score"]
    whole = score(adapter_for(tmp_path, boosting(named=False), threads=2, settings={"parallel": "library"}), batch)
    assert split.equals(whole["score"])


@pytest.mark.parametrize(("rows", "threads", "calls"), [(2047, 2, 1), (2048, 2, 2), (4096, 3, 3), (3000, 1, 1)])
def test_batches_are_cut_into_ranges_of_at_least_1024_rows(
    tmp_path: Path, rows: int, threads: int, calls: int
) -> None:
    CallProbe.calls.clear()
    adapter = adapter_for(tmp_path, CallProbe().fit(X, X[:, 0]), threads=threads)
    score(adapter, conformance_batch(rows=rows))
    assert len(CallProbe.calls) == calls
    assert sum(n for _, n in CallProbe.calls) == rows


def test_library_mode_makes_one_call_with_the_library_threads(tmp_path: Path) -> None:
    CallProbe.calls.clear()
    adapter = adapter_for(tmp_path, CallProbe().fit(X, X[:, 0]), threads=2, settings={"parallel": "library"})
    out = score(adapter, conformance_batch(rows=4096))
    assert set(out["prediction"].to_pylist()) == {2.0}
    assert [n for _, n in CallProbe.calls] == [4096]


def test_results_that_are_not_arrays_fall_back_to_one_call(tmp_path: Path) -> None:
    ListProbe.calls.clear()
    adapter = adapter_for(tmp_path, ListProbe().fit(X, X[:, 0]), threads=2)
    batch = conformance_batch(rows=4096)
    first = score(adapter, batch)
    assert first["prediction"].to_pylist() == [2.0] * 4096  # the batch again, in one call
    assert [n for _, n in ListProbe.calls] == [2048, 2048, 4096]
    score(adapter, batch)
    assert [n for _, n in ListProbe.calls][3:] == [4096]


def test_unknown_parallel_setting(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="parallel"):
        adapter_for(tmp_path, logistic(), setup=False, settings={"parallel": "processes"})


def test_n_jobs_capped_at_threads(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, forest(n_jobs=-1), threads=2)
    assert adapter.estimator.n_jobs == 2
    assert all(getattr(e, "n_jobs", None) in (None, 2) for e in adapter.estimator.estimators_)


# -- load errors ----------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found: .*absent.joblib"):
        load_adapter(spec_for(tmp_path, kind="sklearn", path="absent.joblib", trusted=True))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="needs 'model.path'"):
        load_adapter(spec_for(tmp_path, kind="sklearn", trusted=True))


def test_not_a_pickle(tmp_path: Path) -> None:
    (tmp_path / "m.joblib").write_text("definitely not a pickle")
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="m.joblib", trusted=True))
    with pytest.raises(ModelLoadError) as info:
        adapter.setup()
    assert "cannot load" in info.value.message and "joblib.dump" in str(info.value.hint)


def test_pickle_of_code_that_is_not_installed(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(b"cno_such_module_for_infermill\nModel\n.")
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="m.pkl", trusted=True))
    with pytest.raises(ModelLoadError) as info:
        adapter.setup()
    assert "cannot unpickle" in info.value.message and "no_such_module_for_infermill" in info.value.message
    assert "install the packages" in str(info.value.hint)


def test_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(logistic(), tmp_path / "model.joblib")
    monkeypatch.setitem(sys.modules, "joblib", None)
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True))
    with pytest.raises(ModelLoadError) as info:
        adapter.setup()
    assert "needs the 'joblib' package" in info.value.message
    assert info.value.hint == "pip install 'infermill[sklearn]'"


def test_predict_before_setup(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, logistic(), setup=False)
    with pytest.raises(ModelLoadError, match="before setup"):
        adapter.predict(X)


def test_a_piece_of_a_batch_cut_for_idle_lanes_takes_its_rows_of_the_batch_matrix(tmp_path: Path) -> None:
    for options in ({}, {"input": "pandas"}):  # a numpy matrix, and a DataFrame
        folder = tmp_path / str(len(options))
        folder.mkdir()
        adapter = adapter_for(folder, logistic(named=bool(options)), threads=2, options=options)
        inputs = adapter.preprocess(BATCH)
        assert isinstance(inputs, pd.DataFrame) == bool(options)
        piece = adapter.slice_inputs(inputs, 10, 20)
        assert type(piece) is type(inputs) and len(piece) == 10
        assert np.shares_memory(np.asarray(piece), np.asarray(inputs))  # a view: no second preprocessing
        whole = score(adapter)[adapter.outputs[0]].to_numpy()
        part = adapter.postprocess(adapter.predict(piece), 10)[adapter.outputs[0]].to_numpy()
        np.testing.assert_array_equal(part, whole[10:20])
