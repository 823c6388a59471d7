"""``kind = "sklearn"``: a scikit-learn estimator (or pipeline) saved with joblib or pickle.

Unpickling runs code, so the file is loaded only when ``[model] trusted = true``.

Method and outputs:

* ``method`` defaults to ``predict_proba`` when the estimator has it, else ``predict``.
* ``predict_proba`` and a multi-class ``decision_function``: with one output name (default ``score``) the
  column is the probability (score) of ``positive_class``, default the last entry of ``classes_`` (``1``
  or ``True`` for a binary model); with one output name per class, each class gets a column, in
  ``classes_`` order. Any other number of names is an error.
* A binary ``decision_function`` returns one score, for ``classes_[1]``; ``positive_class =
  classes_[0]`` negates it.
* ``predict`` gives one output (default ``prediction``); a multi-output model's 2-D result is split into
  one column per output name when the counts match, else written as a list column.

Input: the feature columns in order, as one C-ordered float64 array. A model fitted on a DataFrame
(``feature_names_in_``) must be given the same feature names in the same order; once that is checked, the
names are dropped from the loaded estimator so scikit-learn does not warn "X does not have valid feature
names" on every batch, at no cost per batch. Estimators that select columns by name (a
``ColumnTransformer``), or ``options = {input = "pandas"}``, get a DataFrame instead, which also allows
string features.

Threads (``parallel``): with ``"rows"`` (the default) and more than one thread, the engine scores
``threads`` batches at once on lanes (``lanes``/``enter_lane``): each call runs with OpenMP and BLAS
limited to one thread. Called outside the engine's lanes (retry, batch-size probes), a batch is cut into
``threads`` row ranges scored at once the same way. Rows are scored independently, so the predictions are
those of one call; what changes is that no thread waits at an OpenMP barrier while the reader or writer
holds a core. scikit-learn's tree, boosting and linear predictors release the GIL, so lanes and ranges run
in parallel. With ``"library"``, one call per batch with BLAS and OpenMP limited to ``threads``
(threadpoolctl): for estimators that must not be called from two threads at once. Either way ``n_jobs`` of
the loaded estimators is capped at ``threads``.

``[model] accelerate = "compile"``: tree ensembles compiled with treelite + tl2cgen
(``accelerators()``; see ``infermill.accelerate.trees``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._columns import MatrixPool, check_numeric, feature_matrix
from ._labels import class_columns, class_index
from .base import ModelAdapter, file_digest
from .outputs import to_columns
from .settings import SklearnSettings

if TYPE_CHECKING:
    from ..accelerate.base import Accelerator

__all__ = ["SklearnModel", "SklearnSettings"]

METHODS = ("predict_proba", "predict", "decision_function")
_FLOAT64 = np.dtype(np.float64)
MIN_ROWS_PER_THREAD = 1024
"""With parallel = "rows", a batch is cut only into ranges of at least this many rows."""


@dataclass(frozen=True)
class _Plan:
    """How a method's raw result becomes the output columns."""

    column: int | None
    """Take this column of a 2-D result (the positive class); None keeps the result as is."""
    negate: bool
    """Negate a binary decision_function (the positive class is classes_[0])."""
    empty_type: pa.DataType
    """Arrow type of each output for an empty batch, matching what a non-empty batch gives."""


class SklearnModel(ModelAdapter):
    """A pickled scikit-learn estimator; see the module docstring for the method and output rules."""

    kind = "sklearn"
    settings_cls = SklearnSettings
    result_neutral_settings = frozenset({"parallel"})

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        ms, s = self.model_spec, self.settings
        self.settings: SklearnSettings
        if s.method is not None and s.method not in METHODS:
            raise ModelLoadError(
                f"unknown method '{s.method}' for kind 'sklearn' (from 'model.method')",
                hint=f"use one of: {', '.join(METHODS)}",
            )
        unknown = sorted(set(s.options) - {"input"})
        if unknown or s.options.get("input", "numpy") not in ("numpy", "pandas"):
            raise ModelLoadError(
                f"invalid [model.options] for kind 'sklearn': {s.options}",
                hint='the only option is input = "numpy" (default) or "pandas" (a DataFrame)',
            )
        if not ms.trusted:
            raise ModelLoadError(
                f"refusing to load {ms.path or 'the model'}: pickle/joblib files can run arbitrary code when "
                "loaded",
                hint="set trusted = true in [model] only for files you trust (you made them, or their source "
                "is one you trust)",
            )
        self.path = self.model_file()
        self.estimator: Any = None
        """The loaded estimator (after setup, or after ``outputs`` needed the default method)."""
        self._method = s.method
        self._pandas = s.options.get("input") == "pandas"
        self.feature_names: list[str] | None = None
        """The names the estimator was fitted with (None when fitted on an array)."""
        self.n_features: int | None = None
        self._call: Any = None
        self._plan: _Plan | None = None
        self._checked: list[str] | None = None
        self._matrices = MatrixPool()
        """Memory for the feature matrices, reused across batches."""
        self._controller: Any = None
        self._pool: ThreadPoolExecutor | None = None
        """With parallel = "rows" and threads > 1: the threads that score a batch's row ranges."""
        self._lane = threading.local()

    @property
    def method(self) -> str:
        """The estimator method called per batch. Without ``model.method`` this loads the model."""
        if self._method is None:
            self._load()
        assert self._method is not None
        return self._method

    @property
    def outputs(self) -> list[str]:
        if self.model_spec.outputs:
            return list(self.model_spec.outputs)
        return ["score"] if self.method == "predict_proba" else ["prediction"]

    def setup(self) -> None:
        if self.estimator is None:
            self._load()
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError as exc:
            raise missing_extra("sklearn", "threadpoolctl") from exc
        self._plan = self._make_plan()
        if self.model_spec.features is not None:
            self._check_features(list(self.model_spec.features), "'model.features'")
        # Created after loading, so it sees the BLAS/OpenMP libraries the model pulled in.
        self._controller = ThreadpoolController()
        if self.settings.parallel == "rows" and self.threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.threads, thread_name_prefix="infermill-sklearn", initializer=self._single_threaded
            )

    def _single_threaded(self) -> None:
        # OpenMP's thread count is a per-thread setting: this limits only the pool's own threads, for their
        # whole life (BLAS's is process-wide, so it is limited around each batch instead: see predict).
        self._controller.limit(limits=1, user_api="openmp")

    def lanes(self) -> int:
        return self.threads if self.settings.parallel == "rows" else 1

    def in_lane(self) -> bool:
        """This thread is one of the engine's lanes (``enter_lane``): its calls run single-threaded."""
        return bool(getattr(self._lane, "active", False))

    @property
    def takes_dataframe(self) -> bool:
        """The estimator is given a DataFrame, not a float64 array (see the module docstring)."""
        return self._pandas

    def accelerators(self) -> list[Accelerator]:
        from ..accelerate.trees import TreeCompiler

        return [TreeCompiler()]

    def enter_lane(self) -> None:
        if self._controller is None:
            raise ModelLoadError("SklearnModel.enter_lane() called before setup()")
        self._single_threaded()
        self._lane.active = True

    @contextmanager
    def lanes_running(self, lanes: int) -> Iterator[None]:
        if lanes <= 1 or self._controller is None:
            yield
            return
        with self._controller.limit(limits=1, user_api="blas"):  # process-wide: held while lanes run
            yield

    def _load(self) -> None:
        try:
            import joblib
        except ImportError as exc:
            raise missing_extra("sklearn", "joblib") from exc
        try:
            from sklearn.base import BaseEstimator
            from sklearn.compose import ColumnTransformer
        except ImportError as exc:
            raise missing_extra("sklearn", "scikit-learn") from exc
        try:
            estimator = joblib.load(self.path)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(
                f"cannot unpickle {self.path}: {type(exc).__name__}: {exc}",
                hint="the file refers to code that is not importable here; install the packages (and "
                "versions) used to save it",
            ) from exc
        except Exception as exc:  # noqa: BLE001 - unpickling raises anything
            raise ModelLoadError(
                f"cannot load {self.path}: {type(exc).__name__}: {exc}",
                hint="save the model with joblib.dump(model, path) or pickle.dump",
            ) from exc
        available = [m for m in METHODS if callable(getattr(estimator, m, None))]
        if not available:
            raise ModelLoadError(
                f"{self.path} holds a {type(estimator).__name__}, not a fitted scikit-learn estimator",
                hint="save the fitted estimator or pipeline itself",
            )
        method = self.settings.method or ("predict_proba" if "predict_proba" in available else "predict")
        if method not in available:
            raise ModelLoadError(
                f"{type(estimator).__name__} has no method '{method}' (from 'model.method')",
                hint=f"use one of: {', '.join(available)}",
            )
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = None if names is None else [str(n) for n in names]
        self.n_features = getattr(estimator, "n_features_in_", None)
        nested = list(_estimators(estimator, BaseEstimator))
        if self.feature_names is not None and not self._pandas:
            self._pandas = "input" not in self.settings.options and any(
                isinstance(e, ColumnTransformer) for e in nested
            )
        for e in nested:
            if not self._pandas and "feature_names_in_" in vars(e):
                del e.feature_names_in_  # checked once by _check_features instead of on every batch
            jobs = vars(e).get("n_jobs")
            if isinstance(jobs, int) and (jobs < 0 or jobs > self.threads):
                e.n_jobs = self.threads
        self.estimator = estimator
        self._method = method
        self._call = getattr(estimator, method)

    def _make_plan(self) -> _Plan:
        method, outputs = self.method, self.outputs
        found = getattr(self.estimator, "classes_", None)
        # Multi-output classifiers have a list of arrays: no single class order to pick columns from.
        classes = found if isinstance(found, np.ndarray) and found.ndim == 1 else None
        if method == "predict":
            if self.settings.positive_class is not None:
                raise ModelLoadError(
                    "'model.positive_class' applies to predict_proba and decision_function, not predict",
                    hint='remove positive_class, or set method = "predict_proba"',
                )
            empty = pa.array(list(classes)).type if classes is not None else pa.float64()
            return _Plan(None, False, empty)
        if classes is None:
            if method == "predict_proba":
                raise ModelLoadError(
                    f"{type(self.estimator).__name__}.predict_proba returns one array per target, which "
                    "infermill cannot map to columns",
                    hint='use method = "predict"',
                )
            if self.settings.positive_class is not None:
                raise ModelLoadError("'model.positive_class' is set, but the model has no classes_")
            return _Plan(None, False, pa.float64())
        if method == "decision_function" and len(classes) == 2:
            if len(outputs) != 1:
                raise ModelLoadError(
                    "a binary decision_function gives one score, but 'model.outputs' has "
                    f"{len(outputs)} names",
                    hint="give one output name",
                )
            return _Plan(None, class_index(classes, self.settings.positive_class) == 0, pa.float64())
        if class_columns(len(outputs), len(classes), outputs):
            return _Plan(None, False, pa.float64())
        return _Plan(class_index(classes, self.settings.positive_class), False, pa.float64())

    def _check_features(self, columns: list[str], source: str) -> None:
        expected = self.feature_names
        if expected is not None and columns != expected:
            missing = [n for n in expected if n not in columns]
            extra = [n for n in columns if n not in expected]
            parts = [f"missing {missing}"] if missing else []
            parts += [f"not in the model: {extra}"] if extra else []
            detail = "; ".join(parts)
            raise ModelLoadError(
                f"{source} {columns} do not match the features the model was fitted on {expected}"
                + (f" ({detail})" if detail else " (same names, different order)"),
                hint=f"set [model] features = {expected!r} (order matters)",
            )
        if expected is None and self.n_features is not None and len(columns) != self.n_features:
            raise ModelLoadError(
                f"the model takes {self.n_features} features, but got {len(columns)} from {source}: "
                f"{columns}",
                hint="set [model] features to the columns the model was trained on, in training order",
            )

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        names = batch.schema.names
        if names != self._checked:
            if self.estimator is not None:
                self._check_features(names, "the feature columns")
            if not self._pandas:
                check_numeric(
                    batch.schema,
                    self.kind,
                    hint='encode it as numbers, or pass a DataFrame with [model.options] input = "pandas"',
                )
            self._checked = names
        if self._pandas:
            return batch.to_pandas()
        return feature_matrix(batch, _FLOAT64, names, self._matrices)

    def predict(self, inputs: Any) -> Any:
        if self._controller is None:
            raise ModelLoadError("SklearnModel.predict() called before setup()")
        if len(inputs) == 0:
            return None  # scikit-learn rejects empty input; postprocess returns typed empty columns
        try:
            if self.in_lane():
                return self._call(inputs)  # a lane thread: single-threaded already (enter_lane)
            ranges = self._ranges(len(inputs))
            if len(ranges) > 1:
                assert self._pool is not None
                with self._controller.limit(limits=1, user_api="blas"):
                    parts = list(self._pool.map(lambda r: self._call(_rows(inputs, r)), ranges))
                joined = _join(parts)
                if joined is not None:
                    return joined
                # Not arrays: score the batch in one call from now on.
                self._pool.shutdown()
                self._pool = None
            # The limit is set around each call, in the calling thread, because OpenMP limits are per thread.
            with self._controller.limit(limits=self.threads):
                return self._call(inputs)
        except ValueError as exc:
            raise ItemError(
                f"the model rejected the batch: {exc}",
                hint="check the features for missing (NaN) or out-of-range values",
            ) from exc

    def _ranges(self, rows: int) -> list[slice]:
        """The row ranges a batch is scored in: one per pool thread, each of MIN_ROWS_PER_THREAD or more."""
        if self._pool is None:
            return [slice(0, rows)]
        count = max(1, min(self.threads, rows // MIN_ROWS_PER_THREAD))
        bounds = [rows * i // count for i in range(count + 1)]
        return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        plan = self._plan
        assert plan is not None
        if result is None:
            return {name: pa.array([], type=plan.empty_type) for name in self.outputs}
        if plan.column is not None:
            result = result[:, plan.column]
        elif plan.negate:
            result = -result
        return to_columns(result, self.outputs, num_rows)

    def fingerprint(self) -> str:
        return file_digest(self.path)


def _rows(inputs: Any, rows: slice) -> Any:
    """A row range of a numpy array or a DataFrame (a view: nothing is copied)."""
    return inputs.iloc[rows] if hasattr(inputs, "iloc") else inputs[rows]


def _join(parts: list[Any]) -> Any:
    """The row ranges' results as one result, or None when they are not numpy arrays."""
    if not all(isinstance(p, np.ndarray) for p in parts):
        return None
    return np.concatenate(parts)


def _estimators(root: Any, base: type, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """The estimator and every fitted estimator inside it (pipeline steps, ensembles, meta-estimators)."""
    seen = set() if seen is None else seen
    if depth > 8 or id(root) in seen:
        return
    seen.add(id(root))
    if isinstance(root, base):
        yield root
        children: Any = vars(root).values()
    elif isinstance(root, dict):
        children = root.values()
    elif isinstance(root, (list, tuple)):
        children = root
    else:
        return
    for child in children:
        if isinstance(child, (base, dict, list, tuple)):
            yield from _estimators(child, base, depth + 1, seen)
