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

scikit-learn's HistGradientBoosting models (without categorical splits) take a faster road than tl2cgen's
(:class:`WalkedTrees`): tl2cgen turns each tree into nested ``if``s, and with one unpredictable branch per
level, scoring is bound by branch mispredictions (about 2.2 microseconds a row for 100 trees of 31 leaves,
single-threaded, on the benchmark's CPU: slower than reading, preprocessing and writing the row together).
Here every tree is walked to its full depth without a data-dependent branch (a leaf points to itself, the
next node is picked by the comparison's result), 16 rows at a time so that their walks overlap in the CPU.
The walk is a fixed C function (``_WALK_C``), compiled with gcc once per machine into the cache; the model's
trees are arrays handed to it. Leaf values are added in the library's order and the library's own link
function (sigmoid, softmax, identity, ...) is applied, so the results are the library's to the last bit
on the models tried (the check still compares them). 1.7x faster than tl2cgen's library on that model.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .base import Accelerator, Built, Metric, artifact_path, build_once

if TYPE_CHECKING:
    from ..models.base import ModelAdapter

__all__ = ["TreeCompiler", "WalkedTrees", "supported_model"]

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
        forest = _hist_forest(estimator)
        if forest is not None:
            t0 = time.perf_counter()
            library = artifact_path(cache_dir, hashlib.sha256(_WALK_C.encode()).hexdigest(), "walk",
                                    {"gcc": "-O3"}, suffix=".so")
            hit = build_once(library, _compile_walk)
            seconds = 0.0 if hit else time.perf_counter() - t0
            return Built(WalkedTrees(library, adapter, forest), str(library), round(seconds, 3), hit)
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


# -- HistGradientBoosting: branch-free walks --------------------------------------------------------------

_WALK_C = r"""
#include <stddef.h>
#include <stdint.h>
/* Adds each tree's leaf value to out[row * width + column[tree]]. A tree is walked depth[tree] steps from
   roots[tree]; a leaf's two children are itself and its threshold +inf, so the walk stays on it. The next
   node is child[2n] (left) or child[2n + 1] (right): right when the value is not <= the threshold, and not
   a NaN sent left (miss_left). BLOCK rows are walked side by side: their loads overlap. */
enum { BLOCK = 16 };
void infermill_walk(const double* x, size_t rows, size_t cols, int32_t trees, const int32_t* roots,
                    const int32_t* depth, const int32_t* column, const int32_t* feature, const double* threshold,
                    const int32_t* child, const uint8_t* miss_left, const double* value, size_t width,
                    double* out) {
  for (size_t r0 = 0; r0 < rows; r0 += BLOCK) {
    size_t n = rows - r0 < BLOCK ? rows - r0 : BLOCK;
    const double* block = x + r0 * cols;
    for (int32_t t = 0; t < trees; ++t) {
      int32_t node[BLOCK];
      for (size_t i = 0; i < BLOCK; ++i) node[i] = roots[t];
      for (int32_t d = 0; d < depth[t]; ++d) {
        for (size_t i = 0; i < BLOCK; ++i) {
          int32_t k = node[i];
          double v = block[(i < n ? i : 0) * cols + feature[k]];
          int right = !(v <= threshold[k]) & !(v != v && miss_left[k]);
          node[i] = child[2 * k + right];
        }
      }
      for (size_t i = 0; i < n; ++i) out[(r0 + i) * width + column[t]] += value[node[i]];
    }
  }
}
"""
MIN_RANGE_ROWS = 1024
"""Outside the engine's lanes, a call is cut into row ranges of at least this many rows, one per thread."""


@dataclass(frozen=True)
class _Forest:
    """A HistGradientBoosting model's trees as the arrays ``infermill_walk`` takes (see ``_WALK_C``)."""

    roots: np.ndarray
    depth: np.ndarray
    column: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    child: np.ndarray
    miss_left: np.ndarray
    value: np.ndarray
    width: int
    """Raw outputs per row (1, or the number of classes of a multi-class model)."""
    baseline: np.ndarray


def _hist_forest(estimator: Any) -> _Forest | None:
    """The arrays of a scikit-learn HistGradientBoosting model without categorical splits (None otherwise,
    or when its internals are not the ones this reads: tl2cgen compiles it then)."""
    if type(estimator).__name__ not in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        return None
    try:
        predictors = estimator._predictors
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
        loss = estimator._loss
        if not callable(getattr(loss, "predict_proba", None)) and not callable(loss.link.inverse):
            return None
        roots, depth, column, feature, threshold, child, miss_left, value = [], [], [], [], [], [], [], []
        offset = 0
        for iteration in predictors:
            for k, tree in enumerate(iteration):
                nodes = tree.nodes
                if bool(np.any(nodes["is_categorical"])):
                    return None
                count = len(nodes)
                leaf = nodes["is_leaf"].astype(bool)
                own = np.arange(offset, offset + count, dtype=np.int32)
                left = np.where(leaf, own, nodes["left"].astype(np.int32) + offset)
                right = np.where(leaf, own, nodes["right"].astype(np.int32) + offset)
                roots.append(offset)
                depth.append(int(nodes["depth"][leaf].max()) if count else 0)
                column.append(k)
                feature.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int32))
                threshold.append(np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64))
                child.append(np.column_stack([left, right]).reshape(-1))
                miss_left.append(np.where(leaf, 1, nodes["missing_go_to_left"]).astype(np.uint8))
                value.append(nodes["value"].astype(np.float64))
                offset += count
        width = len(baseline)
        if not roots or max(column) >= width:
            return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return _Forest(
        roots=np.asarray(roots, dtype=np.int32), depth=np.asarray(depth, dtype=np.int32),
        column=np.asarray(column, dtype=np.int32), feature=np.concatenate(feature),
        threshold=np.concatenate(threshold), child=np.concatenate(child).astype(np.int32),
        miss_left=np.concatenate(miss_left), value=np.concatenate(value), width=width, baseline=baseline,
    )


def _compile_walk(path: Path) -> None:
    source = path.with_suffix(".c")
    source.write_text(_WALK_C, encoding="utf-8")
    command = ["gcc", "-O3", "-fPIC", "-shared", "-std=c99", "-o", str(path), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"gcc could not compile the tree walk (exit {done.returncode}): " + " | ".join(tail))


class WalkedTrees:
    """A HistGradientBoosting model scored by ``infermill_walk`` (see the module docstring), with
    ``adapter.predict``'s contract. The C call releases the GIL (ctypes), so lanes score side by side; outside
    a lane, a call is cut into one row range per thread."""

    def __init__(self, library: Path, adapter: ModelAdapter, forest: _Forest) -> None:
        self.library = str(library)
        self.adapter = adapter
        self.forest = forest
        estimator: Any = getattr(adapter, "estimator", None)
        self.method: str = getattr(adapter, "method", "predict")
        self.n_features = int(getattr(estimator, "n_features_in_", 0) or 0)
        self._loss = estimator._loss
        classes = getattr(estimator, "classes_", None)
        self.classes: np.ndarray | None = classes if isinstance(classes, np.ndarray) and classes.ndim == 1 else None
        walk = ctypes.CDLL(self.library).infermill_walk
        walk.restype = None
        self._walk = walk
        threads = max(1, int(adapter.threads))
        # Made here, not on first use: calls may come from several threads at once (its threads start lazily).
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="infermill-walk") if threads > 1 else None
        f = forest
        self._trees = (ctypes.c_int32(len(f.roots)), *(_pointer(a) for a in (
            f.roots, f.depth, f.column, f.feature, f.threshold, f.child, f.miss_left, f.value)),
            ctypes.c_size_t(f.width))

    def raw(self, features: np.ndarray) -> np.ndarray:
        """The raw predictions (baseline plus the leaf values), shape (rows, width)."""
        x = np.ascontiguousarray(features, dtype=np.float64)
        if x.ndim != 2 or (self.n_features and x.shape[1] != self.n_features):
            raise ValueError(f"expected a 2-D array of {self.n_features} features, got shape {x.shape}")
        rows = x.shape[0]
        out = np.empty((rows, self.forest.width), dtype=np.float64)
        out[:] = self.forest.baseline
        ranges = self._ranges(rows)
        if len(ranges) == 1 or self._pool is None:
            self._call(x, out, 0, rows)
        else:
            list(self._pool.map(lambda r: self._call(x, out, *r), ranges))
        return out

    def _ranges(self, rows: int) -> list[tuple[int, int]]:
        lane = getattr(self.adapter, "in_lane", lambda: False)()
        count = 1 if lane else max(1, min(int(self.adapter.threads), rows // MIN_RANGE_ROWS))
        bounds = [rows * i // count for i in range(count + 1)]
        return list(zip(bounds, bounds[1:], strict=False))

    def _call(self, x: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
        if hi > lo:
            self._walk(_pointer(x[lo:hi]), ctypes.c_size_t(hi - lo), ctypes.c_size_t(x.shape[1]), *self._trees,
                       _pointer(out[lo:hi]))

    def __call__(self, inputs: Any) -> Any:
        features = np.asarray(inputs)
        if features.shape[0] == 0:
            return None  # as the sklearn adapter: postprocess gives typed empty columns
        raw = self.raw(features)
        if self.classes is None:  # a regressor: the library's inverse link of the raw values
            return self._loss.link.inverse(raw.ravel())
        proba = self._loss.predict_proba(raw if raw.shape[1] > 1 else raw.ravel())
        if self.method == "predict_proba":
            return proba
        return self.classes.take(np.argmax(proba, axis=1))


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)
