"""``kind = "mlflow"``: an MLflow model loaded with ``mlflow.pyfunc.load_model``.

Where the model is: ``path``, its folder (the one holding ``MLmodel``), or ``uri``: ``file:///...``, or
``models:/name/version``, ``models:/name@alias``, ``models:/m-<id>`` (an MLflow 3 logged model) and
``runs:/run_id/path`` when the tracking store is local (``tracking_uri``, else ``MLFLOW_TRACKING_URI``:
a folder, ``file:`` or ``sqlite:``); they resolve to the model's folder in the store, nothing is copied.
Remote registries are refused: download the model (``mlflow artifacts download``) and give its folder.

Trust: loading most MLflow models runs code from the model's files, so it needs ``trusted = true``. The
rule, read from ``MLmodel`` without loading anything:

* ``python_function`` models with a ``python_model`` (cloudpickle), ``code`` paths (imported on load)
  or a ``model_code_path`` (models from code) run code;
* built-in flavors run code unless their files are data only; of those, only ``mlflow.onnx`` (an ONNX
  graph run by onnxruntime, its external data kept inside the model's folder) is known to be safe.
  ``mlflow.sklearn`` stores pickle, cloudpickle or skops files, and skops reads its list of trusted types
  from the model itself, so every sklearn flavor needs ``trusted = true`` too.

Input: the features as a pandas DataFrame; with a column signature, its input columns in its order
(columns it lacks are an error, other features are left out). A tensor signature, or
``input_format = "numpy"``, gets one ``(rows, features)`` array of the tensor's dtype (float64 by default).

Outputs: default names are the signature's named output columns, else ``["prediction"]``. A DataFrame or
a dict maps by name (a single column also fills a single output); a Series, list or 1-D array fills one
output; a 2-D array fills one output as a fixed-size list (``[rows, 1]`` as plain values) or one output per
column. With a signature, outputs are cast to its types, which also types an empty batch.

The fingerprint is a digest of every file in the model's folder (MLmodel and artifacts). The model runs in
this Python environment: its ``requirements.txt`` is not installed (MLflow logs mismatches).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._columns import MatrixPool, feature_matrix
from .base import ModelAdapter, file_digest
from .outputs import to_array
from .settings import MlflowSettings

__all__ = ["MlflowModel", "MlflowSettings", "code_on_load"]

SAFE_LOADERS = {"mlflow.onnx": "an ONNX graph run by onnxruntime"}
"""pyfunc loader modules whose saved files are data only (no code runs when they are loaded)."""

COLSPEC_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "binary": pa.binary(),
}


@dataclass(frozen=True)
class _Signature:
    inputs: list[str] | None
    """Named input columns, in order (None: no column signature)."""
    tensor_dtype: np.dtype[Any] | None
    """The dtype of a single tensor input."""
    outputs: list[str] | None
    """Named output columns."""
    types: dict[str | None, pa.DataType]
    """Output types by name (None: the single unnamed output)."""


def code_on_load(mlmodel: Mapping[str, Any]) -> str | None:
    """Why loading this model (its parsed MLmodel) runs code from its files; None when it does not."""
    flavors = mlmodel.get("flavors") or {}
    pyfunc = flavors.get("python_function")
    if not isinstance(pyfunc, Mapping):
        raise ModelLoadError(
            f"the model has no python_function flavor (its flavors: {sorted(flavors) or 'none'}), so "
            "mlflow.pyfunc cannot load it",
            hint="save it with a flavor that supports pyfunc, or use the matching infermill kind",
        )
    if pyfunc.get("code"):
        return f"it ships code ({pyfunc['code']}) that is imported when it loads"
    if pyfunc.get("model_code_path") or pyfunc.get("model_code"):
        return "it is a models-from-code model: its Python file runs when it loads"
    if pyfunc.get("python_model"):
        return f"its python_model ({pyfunc['python_model']}) is a cloudpickle, which runs code when loaded"
    loader = pyfunc.get("loader_module")
    if loader in SAFE_LOADERS:
        return None
    if loader == "mlflow.sklearn":
        fmt = (flavors.get("sklearn") or {}).get("serialization_format", "pickle")
        return (
            f"its scikit-learn model is stored as {fmt} ({pyfunc.get('model_path', 'model.pkl')}), which can run "
            "code when loaded (skops too: its trusted types are read from the model itself)"
        )
    return f"its loader '{loader}' reads files that may run code when loaded (only {', '.join(SAFE_LOADERS)} is " \
        "known not to)"


class MlflowModel(ModelAdapter):
    """An MLflow pyfunc model; see the module docstring for locations, trust and outputs."""

    kind = "mlflow"
    settings_cls = MlflowSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        ms = self.model_spec
        self.model_dir = self._locate()
        """The local folder holding MLmodel."""
        self.mlmodel = _read_mlmodel(self.model_dir)
        reason = code_on_load(self.mlmodel)
        if reason is not None and not ms.trusted:
            raise ModelLoadError(
                f"refusing to load the MLflow model in {self.model_dir}: {reason}",
                hint="set trusted = true in [model] only for models you trust (you made them, or their source "
                "is one you trust)",
            )
        self._check_onnx()
        self.signature = _signature(self.mlmodel)
        self._types: dict[str, pa.DataType] = {}
        for name in self.outputs:
            known = self.signature.types.get(name)
            if known is None and len(self.outputs) == 1:
                known = self.signature.types.get(None)
            if known is not None:
                self._types[name] = known
        self._model: Any = None
        self._controller: Any = None
        self._checked: list[str] | None = None
        self._matrices = MatrixPool()
        """Memory for the feature matrices, reused across batches."""

    # -- locating and reading the model -------------------------------------------------------------
    def _locate(self) -> str:
        s: MlflowSettings = self.settings
        ms = self.model_spec
        if (ms.path is None) == (s.uri is None):
            raise ModelLoadError(
                "model kind 'mlflow' needs exactly one of 'model.path' (the model's folder) and 'model.uri'",
                hint='e.g. path = "model" or uri = "models:/churn/3"',
            )
        if ms.path is not None:
            local = self.model_file()
        else:
            assert s.uri is not None
            local = self._resolve_uri(s.uri)
        if os.path.isfile(local) and os.path.basename(local) == "MLmodel":
            local = os.path.dirname(local)
        if not os.path.isfile(os.path.join(local, "MLmodel")):
            raise ModelLoadError(
                f"{local} is not an MLflow model folder (no MLmodel file in it)",
                hint="point path at the folder mlflow.<flavor>.save_model wrote",
            )
        return os.path.abspath(local)

    def _resolve_uri(self, uri: str) -> str:
        scheme = urlsplit(uri).scheme
        if scheme == "file":
            return unquote(urlsplit(uri).path)
        if scheme not in ("models", "runs"):
            raise ModelLoadError(
                f"unsupported model.uri {uri!r}: infermill loads local models only",
                hint="use path (a folder), file:///..., or models:/ and runs:/ with a local tracking store; "
                "download remote models first with `mlflow artifacts download`",
            )
        s: MlflowSettings = self.settings
        tracking = s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking:
            raise ModelLoadError(
                f"model.uri {uri!r} needs a tracking store, and none is configured",
                hint="set tracking_uri (a local folder, file:///... or sqlite:///...) or MLFLOW_TRACKING_URI",
            )
        tracking_scheme = urlsplit(tracking).scheme
        if tracking_scheme not in ("", "file", "sqlite"):
            raise ModelLoadError(
                f"the tracking store {tracking_scheme}://... is remote; infermill resolves {uri!r} only with a "
                "local store",
                hint="download the model with `mlflow artifacts download` and set path to its folder",
            )
        if tracking_scheme == "":
            tracking = "file://" + os.path.abspath(self.spec.resolve(tracking))
        with _quiet():
            try:
                local = _registry_path(uri, tracking)
            except ImportError as exc:
                raise missing_extra("mlflow", "mlflow") from exc
            except ModelLoadError:
                raise
            except Exception as exc:  # noqa: BLE001 - MlflowException and the stores' own errors
                raise ModelLoadError(
                    f"cannot resolve {uri!r} in the tracking store {tracking}: {type(exc).__name__}: {exc}",
                    hint="check the model name, version, alias or run id, and tracking_uri",
                ) from exc
        return local

    def _check_onnx(self) -> None:
        pyfunc = self.mlmodel["flavors"]["python_function"]
        if pyfunc.get("loader_module") != "mlflow.onnx" or self.model_spec.trusted:
            return
        from ._onnx_graph import check_external_data, read_graph

        path = os.path.join(self.model_dir, str(pyfunc.get("data", "model.onnx")))
        if not os.path.realpath(path).startswith(os.path.realpath(self.model_dir) + os.sep):
            raise ModelLoadError(f"the ONNX file {path} is outside the model's folder")
        check_external_data(path, read_graph(path))

    @property
    def outputs(self) -> list[str]:
        if self.model_spec.outputs:
            return list(self.model_spec.outputs)
        return list(self.signature.outputs or ["prediction"])

    # -- running ------------------------------------------------------------------------------------
    def setup(self) -> None:
        with _quiet():
            try:
                import mlflow.pyfunc
            except ImportError as exc:
                raise missing_extra("mlflow", "mlflow") from exc
            try:
                self._model = mlflow.pyfunc.load_model(self.model_dir)
            except ImportError as exc:
                raise ModelLoadError(
                    f"the MLflow model in {self.model_dir} needs a package that is not installed: {exc}",
                    hint=f"install what {os.path.join(self.model_dir, 'requirements.txt')} lists",
                ) from exc
            except Exception as exc:  # noqa: BLE001 - loaders raise anything
                raise ModelLoadError(
                    f"cannot load the MLflow model in {self.model_dir}: {type(exc).__name__}: {exc}",
                    hint="check that it loads with mlflow.pyfunc.load_model in this environment",
                ) from exc
        try:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
        except ImportError:
            self._controller = None
        if self.model_spec.features is not None:
            self._check_features(list(self.model_spec.features))

    def _check_features(self, names: list[str]) -> None:
        wanted = self.signature.inputs
        if wanted is None:
            return
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ModelLoadError(
                f"the model's signature takes the columns {wanted}, but the features {names} lack {missing}",
                hint=f"set [model] features = {wanted!r}",
            )

    def _numpy_input(self) -> bool:
        s: MlflowSettings = self.settings
        return s.input_format == "numpy" or self.signature.tensor_dtype is not None

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        names = batch.schema.names
        if names != self._checked:
            self._check_features(names)
            self._checked = names
        if self._numpy_input():
            dtype = self.signature.tensor_dtype or np.dtype(np.float64)
            return feature_matrix(batch, dtype, names, self._matrices)
        if self.signature.inputs is not None:
            batch = batch.select(self.signature.inputs)
        return batch.to_pandas()

    def predict(self, inputs: Any) -> Any:
        if self._model is None:
            raise ModelLoadError("MlflowModel.predict() called before setup()")
        if len(inputs) == 0:
            return None
        params = dict(self.settings.params)
        with self._limit():
            try:
                return self._model.predict(inputs, params=params) if params else self._model.predict(inputs)
            except Exception as exc:
                if type(exc).__name__ == "MlflowException":
                    raise ItemError(f"the model rejected the batch: {exc}") from exc
                raise

    @contextmanager
    def _limit(self) -> Iterator[None]:
        if self._controller is None:
            yield
            return
        with self._controller.limit(limits=self.threads):
            yield

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        names = self.outputs
        if result is None:
            unknown = [n for n in names if n not in self._types]
            if unknown:
                raise ItemError(
                    f"cannot type output(s) {unknown} of an empty batch: the model has no output signature",
                    hint="log the model with a signature (mlflow.models.infer_signature)",
                )
            return {n: pa.array([], self._types[n]) for n in names}
        columns = {n: _column(v, n, num_rows) for n, v in self._split(result, names).items()}
        for name, column in columns.items():
            wanted = self._types.get(name)
            if wanted is not None and column.type != wanted:
                try:
                    columns[name] = column.cast(wanted)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ItemError(f"output '{name}' is not the signature's {wanted}: {exc}") from exc
            else:
                self._types.setdefault(name, column.type)
        return columns

    def _split(self, result: Any, names: list[str]) -> dict[str, Any]:
        if hasattr(result, "columns") and hasattr(result, "iloc"):  # pandas DataFrame
            result = {str(c): result[c] for c in result.columns}
        if isinstance(result, Mapping):
            found = {str(k): v for k, v in result.items()}
            if all(n in found for n in names):
                return {n: found[n] for n in names}
            if len(names) == 1 and len(found) == 1:
                return {names[0]: next(iter(found.values()))}
            raise ModelLoadError(
                f"the model returned columns {sorted(found)}, but the outputs are {names}",
                hint="set [model] outputs to column names the model returns",
            )
        if hasattr(result, "to_numpy") and not isinstance(result, np.ndarray):
            result = result.to_numpy()
        array = np.asarray(result) if isinstance(result, (list, tuple)) else result
        if isinstance(array, np.ndarray) and array.ndim == 2:
            if len(names) == 1:
                return {names[0]: array[:, 0] if array.shape[1] == 1 else array}
            if array.shape[1] == len(names):
                return {n: array[:, i] for i, n in enumerate(names)}
            raise ModelLoadError(
                f"the model returns {array.shape[1]} columns, but {len(names)} outputs are configured {names}"
            )
        if len(names) != 1:
            raise ModelLoadError(
                f"the model returns one value per row, but {len(names)} outputs are configured {names}",
                hint="configure one output",
            )
        return {names[0]: array}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for root, dirs, files in os.walk(self.model_dir):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, self.model_dir).encode() + b"\0")
                digest.update(file_digest(path).encode() + b"\0")
        return digest.hexdigest()[:16]


def _column(values: Any, name: str, num_rows: int) -> pa.Array:
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        values = values.to_numpy()
    if isinstance(values, np.ndarray) and values.dtype == object and len(values):
        first = values[0]
        if isinstance(first, (np.ndarray, list)):  # one array per row (e.g. probabilities)
            try:
                values = np.stack([np.asarray(v) for v in values])
            except ValueError:
                values = [np.asarray(v).tolist() for v in values]
    return to_array(values, name, num_rows)


def _read_mlmodel(model_dir: str) -> dict[str, Any]:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError as exc:
        raise missing_extra("mlflow", "pyyaml") from exc
    path = os.path.join(model_dir, "MLmodel")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise ModelLoadError(f"{path} has no flavors; it is not an MLflow model file")
    return data


def _specs(text: Any) -> list[dict[str, Any]]:
    if not text:
        return []
    try:
        specs = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    return [s for s in specs if isinstance(s, dict)] if isinstance(specs, list) else []


def _spec_type(spec: dict[str, Any]) -> pa.DataType | None:
    if spec.get("type") == "tensor":
        tensor = spec.get("tensor-spec") or {}
        try:
            scalar = pa.from_numpy_dtype(np.dtype(tensor.get("dtype")))
        except (TypeError, pa.ArrowNotImplementedError):
            return None
        shape = tensor.get("shape") or [-1]
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1:
            return pa.list_(scalar, shape[1])
        return scalar if len(shape) <= 2 else None
    return COLSPEC_TYPES.get(str(spec.get("type")))


def _signature(mlmodel: Mapping[str, Any]) -> _Signature:
    signature = mlmodel.get("signature") or {}
    inputs = _specs(signature.get("inputs"))
    outputs = _specs(signature.get("outputs"))
    names = [s["name"] for s in inputs if s.get("type") != "tensor" and s.get("name")]
    tensor_dtype = None
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        try:
            tensor_dtype = np.dtype((inputs[0].get("tensor-spec") or {}).get("dtype"))
        except TypeError:
            tensor_dtype = None
    out_names = [str(s["name"]) for s in outputs if s.get("name")]
    types: dict[str | None, pa.DataType] = {}
    for s in outputs:
        t = _spec_type(s)
        if t is not None:
            types[str(s["name"]) if s.get("name") else None] = t
    return _Signature(
        inputs=names if names and len(names) == len(inputs) else None,
        tensor_dtype=tensor_dtype,
        outputs=out_names if out_names and len(out_names) == len(outputs) else None,
        types=types,
    )


def _registry_path(uri: str, tracking: str) -> str:
    """The local folder a models:/ or runs:/ URI points to in a local tracking store (nothing is copied)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    candidates: list[str] = []
    if uri.startswith("models:"):
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        found = get_model_name_and_version(client, uri)  # type: ignore[no-untyped-call]
        if len(found) == 1:  # models:/m-<id>, an MLflow 3 logged model
            candidates.append(client.get_logged_model(found[0]).artifact_location)
        else:
            source = client.get_model_version_download_uri(found[0], found[1])
            if source.startswith("models:/"):
                source = _registry_path(source, tracking)
            candidates.append(source)
    else:
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        candidates.append(RunsArtifactRepository.get_underlying_uri(uri, tracking_uri=tracking))
        run_id, path = RunsArtifactRepository.parse_runs_uri(uri)  # type: ignore[no-untyped-call]
        # MLflow 3 keeps a model logged in a run as a logged model of the run's experiment.
        experiment = client.get_run(run_id).info.experiment_id
        name = (path or "").split("/")[0]
        for model in client.search_logged_models(experiment_ids=[experiment], filter_string=f"name = '{name}'"):
            if model.source_run_id == run_id:
                candidates.append(model.artifact_location)
    for candidate in candidates:
        local = _local_path(candidate)
        if local is not None and os.path.isfile(os.path.join(local, "MLmodel")):
            return local
    raise ModelLoadError(
        f"{uri!r} does not resolve to a local MLflow model folder (found {candidates})",
        hint="download the model with `mlflow artifacts download` and set path to its folder",
    )


def _local_path(uri: str) -> str | None:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return unquote(parts.path)
    if parts.scheme == "" and os.path.isabs(uri):
        return uri
    return None


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow warns (UserWarning) about type hints and environments on import and load; those are not the
    user's business here, and pytest's filterwarnings = error would turn them into failures."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
        yield
