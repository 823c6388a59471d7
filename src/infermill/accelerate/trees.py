"""``accelerate = "compile"``: tree ensembles compiled to native code with treelite + tl2cgen (gcc).

Supported (the estimator itself, not inside a Pipeline): scikit-learn's HistGradientBoosting, RandomForest,
ExtraTrees and GradientBoosting classifiers and regressors, LightGBM's ``LGBMClassifier`` /
``LGBMRegressor`` and XGBoost's ``XGBClassifier`` / ``XGBRegressor``, loaded by the ``sklearn`` kind with
``method = "predict_proba"`` or ``"predict"``. treelite turns the trees into C, tl2cgen compiles it into a
shared library (in parallel translation units), and the library is cached (``base.artifact_path``): built
once per model, CPU architecture and converter versions, then loaded by every worker and later run.

The compiled model returns what the estimator's method returns (class probabilities in ``classes_`` order,
labels, or regression values), so the adapter's output mapping (positive class, one column per class)
applies unchanged. scikit-learn's forests and classic gradient boosting compare features as float32, and
XGBoost's trees hold float32 thresholds: features are rounded to float32 for those, as the library does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .base import Accelerator, Built, Metric, artifact_path, build_once

if TYPE_CHECKING:
    from ..models.base import ModelAdapter

__all__ = ["TreeCompiler", "supported_model"]

INSTALL = "pip install 'infermill[accelerate]'  (treelite==4.8.1, tl2cgen==1.0.0)"
_SKLEARN_FLOAT32 = {
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
    "GradientBoostingClassifier", "GradientBoostingRegressor",
}
"""scikit-learn's tree predictors cast features to float32 before comparing them with the thresholds."""
_SKLEARN = _SKLEARN_FLOAT32 | {"HistGradientBoostingClassifier", "HistGradientBoostingRegressor"}
_LIGHTGBM = {"LGBMClassifier", "LGBMRegressor"}
_XGBOOST = {"XGBClassifier", "XGBRegressor"}
TRANSLATION_UNITS = 16
"""tl2cgen ``parallel_comp``: the C code is split into this many files, compiled side by side (one file
of every tree takes gcc far longer, and one thread)."""
TREES_PER_UNIT = 8
"""A small model is not cut into files of fewer trees than this (each file costs a gcc start)."""


def supported_model(estimator: Any) -> str | None:
    """The library family of a supported tree ensemble ("sklearn", "lightgbm", "xgboost"), else None."""
    name, module = type(estimator).__name__, type(estimator).__module__
    if name in _SKLEARN and module.startswith("sklearn."):
        return "sklearn"
    if name in _LIGHTGBM and module.startswith("lightgbm"):
        return "lightgbm"
    if name in _XGBOOST and module.startswith("xgboost"):
        return "xgboost"
    return None


class TreeCompiler(Accelerator):
    """Compiles a tree ensemble loaded by the ``sklearn`` kind (see the module docstring)."""

    method: ClassVar[str] = "compile"
    metric: ClassVar[Metric] = "max_abs_diff"
    default_bound: ClassVar[float] = 1e-6

    def unavailable(self, adapter: ModelAdapter) -> str | None:
        missing = [m for m in ("treelite", "tl2cgen") if importlib.util.find_spec(m) is None]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            return f"it needs {' and '.join(missing)}, which {verb} not installed: {INSTALL}"
        if shutil.which("gcc") is None:
            return "it compiles with gcc, which is not on the PATH: install gcc (e.g. apt-get install gcc)"
        estimator = getattr(adapter, "estimator", None)
        family = supported_model(estimator)
        if family is None:
            return (
                f"{type(estimator).__name__} is not a supported tree ensemble (scikit-learn HistGradientBoosting, "
                "RandomForest, ExtraTrees, GradientBoosting; LightGBM; XGBoost; not inside a Pipeline)"
            )
        method = getattr(adapter, "method", None)
        if method not in ("predict_proba", "predict"):
            return f"method {method!r} is not compiled (only predict_proba and predict)"
        if getattr(adapter, "takes_dataframe", False):
            return "the model takes a DataFrame (input = \"pandas\"): only numeric feature arrays are compiled"
        outputs = getattr(estimator, "n_outputs_", 1)
        if isinstance(outputs, int) and outputs > 1:
            return f"the model predicts {outputs} targets at once: only single-target models are compiled"
        return None

    def build(self, adapter: ModelAdapter, cache_dir: Path) -> Built:
        import tl2cgen
        import treelite

        estimator: Any = getattr(adapter, "estimator", None)
        family = supported_model(estimator)
        assert family is not None, "build() called on a model unavailable() refuses"
        versions = {"treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__}
        target = artifact_path(cache_dir, adapter.fingerprint(), self.method, versions, suffix=".so")
        t0 = time.perf_counter()

        def compile_to(path: Path) -> None:
            model = _to_treelite(estimator, family)
            checkpoint = path.with_suffix(".treelite")
            model.serialize(str(checkpoint))
            _compile(checkpoint, path, max(1, min(TRANSLATION_UNITS, int(model.num_tree) // TREES_PER_UNIT)))

        hit = build_once(target, compile_to)
        seconds = 0.0 if hit else time.perf_counter() - t0
        compiled = CompiledTrees(target, adapter, family)
        return Built(compiled, str(target), round(seconds, 3), hit)

    def agreement(self, original: Any, accelerated: Any) -> float:
        if original is None or accelerated is None:
            return 0.0 if original is None and accelerated is None else float("inf")
        a, b = np.asarray(original), np.asarray(accelerated)
        if a.shape != b.shape:
            return float("inf")
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            return 0.0 if bool(np.array_equal(a, b)) else float("inf")  # labels: equal or not at all
        if a.size == 0:
            return 0.0
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        # A NaN where the other has a number is a disagreement; NaN in both is agreement.
        both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
        diff = np.where(both_nan, 0.0, diff)
        return float(np.nan_to_num(diff, nan=np.inf).max())


class CompiledTrees:
    """The compiled library as a callable with ``adapter.predict``'s contract (features in, the estimator
    method's result out)."""

    def __init__(self, library: Path, adapter: ModelAdapter, family: str) -> None:
        import tl2cgen

        self._tl2cgen = tl2cgen
        self.library = str(library)
        self.adapter = adapter
        estimator: Any = getattr(adapter, "estimator", None)
        self.method: str = getattr(adapter, "method", "predict")
        classes = getattr(estimator, "classes_", None)
        self.classes: np.ndarray | None = classes if isinstance(classes, np.ndarray) and classes.ndim == 1 else None
        self.float32_features = family == "xgboost" or type(estimator).__name__ in _SKLEARN_FLOAT32
        self._local = threading.local()
        # tl2cgen's Predictor may be called by one thread at a time: one per thread (a lane each).
        probe = self._predictor()
        self.dtype = np.float32 if probe.threshold_type == "float32" else np.float64

    def _predictor(self) -> Any:
        predictor = getattr(self._local, "predictor", None)
        if predictor is None:
            # On a lane thread the lanes are the parallelism: one thread per call (as the adapter's own call).
            lane = getattr(self.adapter, "in_lane", lambda: False)()
            threads = 1 if lane else max(1, self.adapter.threads)
            predictor = self._tl2cgen.Predictor(self.library, nthread=threads)
            self._local.predictor = predictor
        return predictor

    def __call__(self, inputs: Any) -> Any:
        features = np.asarray(inputs)
        rows = features.shape[0]
        if rows == 0:
            return None  # as the sklearn adapter: postprocess gives typed empty columns
        if self.float32_features:
            features = features.astype(np.float32)
        matrix = np.ascontiguousarray(features, dtype=self.dtype)
        raw = self._predictor().predict(self._tl2cgen.DMatrix(matrix, dtype=np.dtype(self.dtype).name))
        scores = raw.reshape(rows, -1).astype(np.float64, copy=False)
        if self.classes is None:  # a regressor: one value per row
            return scores[:, 0]
        if scores.shape[1] == 1 and len(self.classes) == 2:  # binary: the positive class's probability
            scores = np.column_stack([1.0 - scores[:, 0], scores[:, 0]])
        if self.method == "predict_proba":
            return scores
        return self.classes.take(np.argmax(scores, axis=1))


_COMPILE = """
import sys, tl2cgen, treelite
model = treelite.Model.deserialize(sys.argv[1])
tl2cgen.export_lib(model, toolchain="gcc", libpath=sys.argv[2], params={"parallel_comp": int(sys.argv[3])},
                   nthread=int(sys.argv[4]))
"""


def _compile(checkpoint: Path, library: Path, units: int) -> None:
    """Generate C from the treelite checkpoint and compile it, in a child process: tl2cgen's bundled treelite
    logs from native code straight to the process's stderr (a note that the model comes from a newer
    treelite), which would land in the middle of a batch job's output; the child's output is kept for the
    error message instead."""
    command = [sys.executable, "-c", _COMPILE, str(checkpoint), str(library), str(units),
               str(os.cpu_count() or 1)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not library.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"tl2cgen could not compile the model (exit {done.returncode}): " + " | ".join(tail))


def _to_treelite(estimator: Any, family: str) -> Any:
    import treelite

    if family == "lightgbm":
        return treelite.frontend.from_lightgbm(estimator.booster_)
    if family == "xgboost":
        return treelite.frontend.from_xgboost(estimator.get_booster())
    return treelite.sklearn.import_model(estimator)
