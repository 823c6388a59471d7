"""Real models for the model tests: small scikit-learn models trained on the conformance features,
saved with joblib or converted to ONNX with skl2onnx. Training happens once per process (cached)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from infermill.spec import JobSpec, ModelSpec
from infermill.testing.models import conformance_batch, model_spec_for

FEATURES = ["f0", "f1", "f2"]


def spec_for(tmp_path: Path, **model: Any) -> JobSpec:
    """A JobSpec around ``ModelSpec(**model)`` with ``base_dir = tmp_path``."""
    return model_spec_for(tmp_path, ModelSpec(**model))


@cache
def training() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, a binary target, a 3-class target and a regression target (same features as the suite)."""
    batch = conformance_batch(rows=300, seed=1)
    x = np.column_stack([c.to_numpy() for c in batch.columns])
    binary = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    three = np.digitize(x[:, 0], [-0.5, 0.5]).astype(np.int64)
    regression = 2.0 * x[:, 0] - x[:, 1] + 0.1 * x[:, 2]
    return x, binary, three, regression


def frame(x: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(x, columns=names or FEATURES)


@cache
def logistic(c: float = 1.0, named: bool = False, labels: str = "int") -> LogisticRegression:
    """A binary logistic regression; ``named`` fits on a DataFrame (feature_names_in_)."""
    x, y, _, _ = training()
    target = np.where(y == 1, "yes", "no") if labels == "str" else y
    return LogisticRegression(C=c).fit(frame(x) if named else x, target)


@cache
def multiclass() -> LogisticRegression:
    x, _, y, _ = training()
    return LogisticRegression().fit(x, y)


@cache
def boosting(named: bool = True, max_iter: int = 10) -> HistGradientBoostingClassifier:
    x, y, _, _ = training()
    return HistGradientBoostingClassifier(max_iter=max_iter, random_state=0).fit(frame(x) if named else x, y)


@cache
def forest(n_jobs: int | None = None) -> RandomForestClassifier:
    x, y, _, _ = training()
    return RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0, n_jobs=n_jobs).fit(x, y)


@cache
def linear(scale: float = 1.0) -> LinearRegression:
    x, _, _, y = training()
    return LinearRegression().fit(x, y * scale)


def save(model: Any, path: Path) -> Path:
    """joblib.dump ``model`` (a fresh copy each call, as tests may change what they load)."""
    joblib.dump(model, path)
    return path


@cache
def onnx_bytes(which: str, zipmap: bool = True) -> bytes:
    """A skl2onnx conversion of one of the models above, float32 input named ``X``."""
    from skl2onnx import to_onnx

    models = {
        "logistic": lambda: logistic(),
        "logistic_c": lambda: logistic(c=0.01),
        "logistic_str": lambda: logistic(labels="str"),
        "multiclass": multiclass,
        "forest": lambda: forest(),
        "linear": lambda: linear(),
        "linear_x2": lambda: linear(scale=2.0),
    }
    model = models[which]()
    x = training()[0][:1].astype(np.float32)
    options = None if zipmap or not hasattr(model, "predict_proba") else {"zipmap": False}
    onx = to_onnx(model, x, options=options) if options else to_onnx(model, x)
    data: bytes = onx.SerializeToString()
    return data


def write_onnx(path: Path, which: str, zipmap: bool = True) -> Path:
    path.write_bytes(onnx_bytes(which, zipmap))
    return path


class ThreadProbe(RegressorMixin, BaseEstimator):
    """An estimator whose predictions are the BLAS/OpenMP thread limits seen while predicting."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> ThreadProbe:
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_info

        most = max(info["num_threads"] for info in threadpool_info())
        return np.full(len(x), float(most))
