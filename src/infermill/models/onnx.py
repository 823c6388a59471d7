"""``kind = "onnx"``: an ONNX model run by onnxruntime on the CPU.

The session uses ``intra_op_num_threads = threads``, one inter-op thread, sequential execution, the CPU
provider and no thread spinning (workers share cores with their readers). Before onnxruntime opens the
file, every external-data location is checked: one outside the model's folder is refused.

Inputs:

* One graph input: the features as one ``(rows, features)`` array in feature order, cast to the input's
  element type (a rank-1 input takes the single feature column itself).
* Several graph inputs: each is fed the feature column of the same name, cast, shaped ``[N]`` or
  ``[N, 1]`` per the input's rank. Graph inputs and feature columns must match one to one.

Output selection, first rule that applies:

1. **Named**: when every name in ``model.outputs`` is a graph output, each column is that graph output:
   ``[N]`` and ``[N, 1]`` give one value per row, ``[N, k]`` a list of k values, and a ZipMap sequence
   of maps a list of class probabilities in class order.
2. **Probabilities** (unless ``method = "predict"``): the probability output is the first output that is
   a sequence of maps (skl2onnx's ZipMap), else the first 2-D tensor output whose name contains
   ``prob`` (skl2onnx with ``zipmap=False``: ``probabilities``). With one output name (default
   ``score``) the column is the probability of ``positive_class``: class labels come from the model
   (ZipMap's keys or the classifier's ``classlabels_*``), default the last class; a model without
   labels takes ``positive_class`` as a column index. With one name per class, every class gets a
   column. ``method = "predict_proba"`` requires a probability output.
3. **First output**: the first graph output, or with ``method = "predict"`` on a classifier the first
   output that is not the probabilities (skl2onnx's label). ``[N]`` or ``[N, 1]`` give one column
   (default ``prediction``), as for a regressor; ``[N, k]`` gives k columns when k names are
   configured, else a list column.

The fingerprint covers the model file and its external data files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._columns import MatrixPool, check_numeric, column_values, feature_matrix
from ._labels import class_columns, class_index
from ._onnx_graph import GraphInfo, ValueInfo, check_external_data, read_graph
from .base import ModelAdapter, file_digest
from .outputs import to_columns
from .settings import OnnxSettings

__all__ = ["OnnxModel"]

METHODS = ("predict_proba", "predict")


@dataclass(frozen=True)
class _OutputPlan:
    """Which graph outputs to fetch and how they become columns (see the module docstring)."""

    mode: Literal["named", "score", "classes", "first"]
    fetch: tuple[ValueInfo, ...]
    column: int | None = None
    """For ``score``: the positive class's column."""
    labels: tuple[Any, ...] | None = None
    """Class labels in column order, when the model lists them."""


class OnnxModel(ModelAdapter):
    """An ONNX model; see the module docstring for the input and output rules."""

    kind = "onnx"
    settings_cls = OnnxSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        self.settings: OnnxSettings
        method = self.settings.method
        if method is not None and method not in METHODS:
            raise ModelLoadError(
                f"unknown method '{method}' for kind 'onnx' (from 'model.method')",
                hint=f"use one of: {', '.join(METHODS)}, or name graph outputs in 'model.outputs'",
            )
        self.path = self.model_file()
        self.session: Any = None
        """The onnxruntime InferenceSession, after setup()."""
        self._checked: list[str] | None = None
        self._matrices = MatrixPool()
        """Memory for the feature matrices, reused across batches."""

    @cached_property
    def graph(self) -> GraphInfo:
        """The model's inputs, outputs, class labels and external data (parsed once, no session)."""
        return read_graph(self.path)

    @cached_property
    def plan(self) -> _OutputPlan:
        """How outputs are chosen; needs no session."""
        return _plan_outputs(
            self.graph, self.model_spec.outputs, self.settings.method, self.settings.positive_class
        )

    @property
    def outputs(self) -> list[str]:
        if self.model_spec.outputs:
            return list(self.model_spec.outputs)
        return ["score"] if self.plan.mode in ("score", "classes") else ["prediction"]

    def setup(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_extra("onnx", "onnxruntime") from exc
        info = self.graph
        check_external_data(self.path, info)
        plan = self.plan
        if self.model_spec.features is not None:
            self._check_inputs(list(self.model_spec.features), "'model.features'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                self.path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelLoadError(
                f"onnxruntime {ort.__version__} cannot load {self.path}: {exc}",
                hint="check that the model's opset is supported by this onnxruntime version",
            ) from exc
        have = {o.name for o in session.get_outputs()}
        wanted = {i.name for i in info.inputs}
        if not {v.name for v in plan.fetch} <= have or {i.name for i in session.get_inputs()} != wanted:
            raise ModelLoadError(
                f"onnxruntime reads the inputs/outputs of {self.path} differently than expected"
            )
        self.session = session

    def _check_inputs(self, columns: list[str], source: str) -> None:
        inputs = self.graph.inputs
        if len(inputs) == 1:
            only = inputs[0]
            rank = only.rank
            width = only.shape[1] if only.shape is not None and len(only.shape) == 2 else None
            if rank is not None and rank not in (1, 2):
                raise ModelLoadError(
                    f"the model's input '{only.name}' has rank {rank}; kind 'onnx' feeds tables"
                )
            if (rank == 1 and len(columns) != 1) or (width is not None and width != len(columns)):
                takes = 1 if rank == 1 else width
                raise ModelLoadError(
                    f"the model's input '{only.name}' takes {takes} feature(s), but got {len(columns)} from "
                    f"{source}: {columns}",
                    hint="set [model] features to the model's input columns, in training order",
                )
            return
        names = [i.name for i in inputs]
        missing = [n for n in names if n not in columns]
        extra = [c for c in columns if c not in names]
        if missing or extra:
            raise ModelLoadError(
                f"the model has inputs {names}; {source} {columns} "
                + (f"lacks {missing}" if missing else f"has extra columns {extra}"),
                hint=f"set [model] features = {names!r}; each graph input is fed the column of its name",
            )

    def preprocess(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        names = batch.schema.names
        inputs = self.graph.inputs
        if names != self._checked:
            self._check_inputs(names, "the feature columns")
            for info in inputs:
                if info.dtype != "object":  # string inputs take any column; numeric ones need numbers
                    fields = batch.schema if len(inputs) == 1 else pa.schema([batch.schema.field(info.name)])
                    check_numeric(fields, self.kind)
            self._checked = names
        if len(inputs) == 1:
            only = inputs[0]
            dtype = np.dtype(only.dtype)
            if only.rank == 1:
                return {only.name: column_values(batch.column(0), names[0], dtype).astype(dtype, copy=False)}
            return {only.name: feature_matrix(batch, dtype, names, self._matrices)}
        feeds = {}
        for info in inputs:
            dtype = np.dtype(info.dtype)
            values = column_values(batch.column(names.index(info.name)), info.name, dtype).astype(
                dtype, copy=False
            )
            feeds[info.name] = values if info.rank == 1 else values.reshape(-1, 1)
        return feeds

    def predict(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        if self.session is None:
            raise ModelLoadError("OnnxModel.predict() called before setup()")
        result: list[Any] = self.session.run([v.name for v in self.plan.fetch], inputs)
        return result

    def classify_error(self, exc: BaseException) -> str | None:
        """ONNX Runtime raises one exception type for everything; an allocation failure is only told apart
        by its text, so that match lives here, with the library that needs it."""
        if type(exc).__name__ in ("RuntimeException", "Fail") and "Failed to allocate memory" in str(exc):
            return "oom"
        if type(exc).__name__ in ("InvalidArgument", "Fail"):
            return "item"  # a value the graph refuses (shape, type)
        return None

    def postprocess(self, result: list[Any], num_rows: int) -> dict[str, pa.Array]:
        plan, names = self.plan, self.outputs
        if plan.mode == "named":
            values = {
                n: _column(v, info, plan.labels) for n, v, info in zip(names, result, plan.fetch, strict=True)
            }
            return to_columns(values, names, num_rows)
        value, info = result[0], plan.fetch[0]
        if plan.mode == "score":
            assert plan.column is not None
            if info.kind == "seq_map":
                return to_columns(_zipmap_column(value, info, plan.labels, plan.column), names, num_rows)
            return to_columns(value[:, plan.column], names, num_rows)
        return to_columns(_column(value, info, plan.labels), names, num_rows)

    def fingerprint(self) -> str:
        check_external_data(self.path, self.graph)
        digest = hashlib.sha256(file_digest(self.path).encode())
        base = os.path.dirname(os.path.abspath(self.path))
        for location in sorted(set(self.graph.external_locations)):
            target = os.path.join(base, location)
            digest.update(
                f"{location}:{file_digest(target) if os.path.exists(target) else 'missing'}".encode()
            )
        return digest.hexdigest()[:16]


def _plan_outputs(
    info: GraphInfo, names: list[str] | None, method: str | None, positive_class: Any
) -> _OutputPlan:
    outs = info.outputs
    if not outs:
        raise ModelLoadError("the ONNX model has no outputs")
    labels = tuple(info.class_labels) if info.class_labels else None
    by_name = {o.name: o for o in outs}
    listing = ", ".join(f"{o.name} ({_describe(o)})" for o in outs)
    if names and all(n in by_name for n in names):
        return _OutputPlan("named", tuple(by_name[n] for n in names), labels=labels)
    probs = next((o for o in outs if o.kind == "seq_map"), None) or next(
        (o for o in outs if o.kind == "tensor" and o.rank == 2 and "prob" in o.name.lower()), None
    )
    if method == "predict_proba" and probs is None:
        raise ModelLoadError(
            f'method = "predict_proba", but the model has no probability output; its outputs: {listing}',
            hint="remove 'model.method', or name the graph outputs you want in 'model.outputs'",
        )
    if probs is not None and method != "predict":
        wanted = names or ["score"]
        width = probs.shape[1] if probs.shape is not None and len(probs.shape) == 2 else None
        count = len(labels) if labels else width
        if count is None:
            if len(wanted) > 1:
                raise ModelLoadError(
                    f"cannot tell how many classes '{probs.name}' has, to name a column each"
                )
            return _OutputPlan("score", (probs,), _index_without_labels(positive_class), labels)
        if class_columns(len(wanted), count, wanted):
            return _OutputPlan("classes", (probs,), labels=labels)
        column = (
            class_index(labels, positive_class) if labels else _index_without_labels(positive_class, count)
        )
        return _OutputPlan("score", (probs,), column % count, labels)
    candidates = [o for o in outs if o is not probs] if method == "predict" else outs
    first = candidates[0] if candidates else None
    if first is None or first.kind != "tensor":
        raise ModelLoadError(
            f"cannot choose an output column; the model's outputs: {listing}",
            hint="name the graph outputs you want in 'model.outputs'",
        )
    if names and len(names) > 1:
        width = first.shape[1] if first.shape is not None and len(first.shape) == 2 else None
        if width is not None and width != len(names):
            raise ModelLoadError(
                f"'model.outputs' has {len(names)} names, but output '{first.name}' has {width} column(s)",
                hint=f"give {width} names, or name graph outputs; the model's outputs: {listing}",
            )
    return _OutputPlan("first", (first,), labels=labels)


def _index_without_labels(positive_class: Any, count: int | None = None) -> int:
    if positive_class is None:
        return -1
    is_int = isinstance(positive_class, int) and not isinstance(positive_class, bool)
    if is_int and (count is None or 0 <= positive_class < count):
        return int(positive_class)
    raise ModelLoadError(
        f"positive_class {positive_class!r} cannot be found: the model does not list its class labels",
        hint="give the probability column's index (0-based) as positive_class",
    )


def _describe(info: ValueInfo) -> str:
    if info.kind == "seq_map":
        return "sequence of maps"
    if info.kind == "tensor":
        dims = "?" if info.shape is None else ", ".join("N" if d is None else str(d) for d in info.shape)
        return f"{info.dtype} [{dims}]"
    return "unsupported type"


def _column(value: Any, info: ValueInfo, labels: tuple[Any, ...] | None) -> Any:
    """A graph output as column values: [N, 1] flattened, ZipMap maps as a 2-D array."""
    if info.kind == "seq_map":
        return _zipmap_matrix(value, info, labels)
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 1:
        value = value.reshape(-1)
    if info.dtype == "object" and isinstance(value, np.ndarray) and value.ndim == 1:
        return pa.array(value, type=pa.string())  # typed even when empty (empty object arrays are null-typed)
    return value


def _zipmap_matrix(rows: list[dict[Any, Any]], info: ValueInfo, labels: tuple[Any, ...] | None) -> np.ndarray:
    keys = list(labels) if labels else (list(rows[0]) if rows else [])
    dtype = np.dtype(info.dtype)
    if not rows:
        return np.empty((0, len(keys)), dtype=dtype)
    return np.array([[row[k] for k in keys] for row in rows], dtype=dtype)


def _zipmap_column(
    rows: list[dict[Any, Any]], info: ValueInfo, labels: tuple[Any, ...] | None, column: int
) -> np.ndarray:
    dtype = np.dtype(info.dtype)
    if not rows:
        return np.empty(0, dtype=dtype)
    key = labels[column] if labels else list(rows[0])[column]
    return np.fromiter((row[key] for row in rows), dtype=dtype, count=len(rows))
