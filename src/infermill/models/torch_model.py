"""``kind = "torch"``: a PyTorch model, on the CPU or a GPU.

Where the model comes from (``[model] path`` or ``factory``):

* **TorchScript** (``torch.jit.save``) or **torch.export** (``torch.export.save``, usually ``.pt2``): the
  file is the model; neither runs Python code from the file when loaded.
* **factory + weights**: ``factory = "pkg.module:build"`` or ``"file.py:build"`` (relative to the job file)
  names a function (or class) that returns an ``nn.Module``; ``[model.options]`` are passed to it as
  keywords. ``weights`` is a state dict loaded into it with ``load_state_dict``: a ``.safetensors`` file
  (``safetensors.torch.load_file``), or a ``torch.save``'d state dict read with ``weights_only=True``.
* **full checkpoint** (``torch.save(model)``, ``.pt``/``.pth``): unpickling runs code, so it is loaded
  only with ``trusted = true``; otherwise it is read with ``weights_only=True``, which refuses the
  pickled module with an explanation.

``format = "auto"`` tells TorchScript, torch.export and pickle checkpoints apart by the archive's
entries (``code/``, ``archive_format``/``models/``, ``data.pkl``) without loading anything.

Input (``inputs``):

* ``tensor`` (default): the features as one float tensor ``[N, F]`` of ``dtype``, in feature order; a
  fixed-size list column (e.g. a vector) contributes its k values as k columns.
* ``dict``: one dict argument ``{feature name: tensor}``: floats as ``dtype``, integers as int64,
  booleans as bool; ``[N]`` per scalar column, ``[N, k]`` per fixed-size list column.
* ``kwargs``: the same tensors as keyword arguments, ``model(**features)``.

Output: a tensor ``[N]`` or ``[N, 1]`` gives one column; ``[N, k]`` gives k columns when k output names
are configured, else one fixed-size list column of k values; a tuple (or list) of tensors maps to the
output names in order, and a dict of tensors by name. float16/bfloat16 results are written as float32.
Default output name: ``prediction``.

Every call runs under ``torch.inference_mode()``; ``torch.set_num_threads(threads)`` is set in setup.
``parallel = "batches"`` (CPU, opt-in: the module's forward must be safe to call from several threads)
scores ``threads`` batches at once, one torch thread each; not with ``compile = true``.
Out-of-memory errors are classified ``oom`` (the engine halves the batch and frees the CUDA cache).
``compile = true`` wraps the model in ``torch.compile`` (the first batches are slow while it compiles).

The fingerprint covers the model file, or the factory's source file, the weights file and the options.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import InfermillError, ItemError, ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._columns import column_values
from ._entrypoint import EntryPoint, import_target, parse_entrypoint, source_file, temporary_path
from ._torch_runtime import (
    TorchAdapter,
    check_device,
    classify_torch_error,
    import_torch,
    pin,
    quiet,
    release_cached_memory,
    select_device,
    to_device,
    to_numpy,
    torch_dtype,
)
from .base import file_digest
from .outputs import to_columns
from .settings import TorchSettings

if TYPE_CHECKING:
    import torch

__all__ = ["TorchModel", "TorchSettings", "detect_format"]

Format = Literal["torchscript", "export", "checkpoint"]


class TorchModel(TorchAdapter):
    """A PyTorch model; see the module docstring for sources, inputs and outputs."""

    kind = "torch"
    uses_gpu = True
    settings_cls = TorchSettings
    settings: TorchSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        s, ms = self.settings, self.model_spec
        check_device(s.device, self.kind)
        if s.parallel == "batches" and s.compile:
            raise ModelLoadError(
                "kind 'torch': parallel = \"batches\" calls the model from several threads at once, "
                "which a torch.compile'd model does not support",
                hint='use parallel = "library" with compile = true, or leave compile out',
            )
        self.entry: EntryPoint | None = None
        self.path: str | None = None
        self.weights: str | None = None
        self.format: Format | None = None
        if s.factory:
            if ms.path:
                raise ModelLoadError(
                    "kind 'torch' takes either 'model.path' (a saved model) or 'model.factory', not both",
                    hint="a factory's state dict goes in 'model.weights'",
                )
            self.entry = _factory_entry(s.factory, spec)
            if s.weights:
                self.weights = spec.resolve(s.weights)
                if not os.path.isfile(self.weights):
                    raise ModelLoadError(
                        f"weights file not found: {self.weights} (from 'model.weights')",
                        hint="check the path; relative paths are resolved against the job file's folder",
                    )
        else:
            if s.weights:
                raise ModelLoadError(
                    "'model.weights' needs 'model.factory', the function that builds the module",
                    hint='set factory = "file.py:build", or export the whole model (torch.export.save)',
                )
            if s.options:
                raise ModelLoadError(
                    "[model.options] are passed to 'model.factory', which is not set", hint="remove [model.options]"
                )
            self.path = self.model_file()
            self.format = detect_format(self.path) if s.format == "auto" else s.format
        self.module: Any = None
        """The loaded (and possibly compiled) module, after setup()."""
        self.device: torch.device | None = None
        self._dtype: Any = None

    def setup(self) -> None:
        torch = import_torch(self.kind)
        torch.set_num_threads(self.threads)
        s = self.settings
        device = select_device(s.device, torch)
        dtype = torch_dtype(s.dtype, torch)
        module = self._load(torch, device)
        exported = self.format == "export"
        if not exported:
            module.eval()  # an exported program is traced in the mode it was exported in (and has no eval())
        module = module.to(device=device, dtype=dtype) if dtype != torch.float32 else module.to(device)
        if s.compile:
            module = torch.compile(module)
        self.module, self.device, self._dtype = module, device, dtype

    def _load(self, torch: Any, device: torch.device) -> Any:
        if self.entry is not None:
            return self._build(torch)
        path, fmt = self.path, self.format
        assert path is not None
        try:
            if fmt == "torchscript":
                with quiet("`torch.jit.load` is deprecated"):
                    return torch.jit.load(path, map_location=device)
            if fmt == "export":
                program = torch.export.load(path)
                if device.type != "cpu":
                    from torch.export.passes import move_to_device_pass

                    program = move_to_device_pass(program, device)
                return program.module()
        except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(
                f"cannot load {path} as {fmt}: {type(exc).__name__}: {exc}",
                hint='set [model] format = "torchscript", "export" or "checkpoint" if the file is another kind',
            ) from exc
        return self._checkpoint(torch, path)

    def _checkpoint(self, torch: Any, path: str) -> Any:
        if not self.model_spec.trusted:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - the unpickler raises many types
                raise ModelLoadError(
                    f"refusing to load {path}: it is a pickled model (torch.save(model)), and unpickling can run "
                    "arbitrary code; reading it with weights_only=True failed",
                    hint="set trusted = true in [model] only for files you trust; better, save the model with "
                    "torch.export.save, or save its state_dict as safetensors and use 'factory' + 'weights'",
                ) from exc
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - unpickling raises anything
                raise ModelLoadError(
                    f"cannot load {path}: {type(exc).__name__}: {exc}",
                    hint="the file refers to code that must be importable here (the model's class)",
                ) from exc
        if not isinstance(loaded, torch.nn.Module):
            what = "a state dict" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
            raise ModelLoadError(
                f"{path} holds {what}, not a model",
                hint="give the function that builds the module as 'model.factory' and this file as 'model.weights'",
            )
        return loaded

    def _build(self, torch: Any) -> Any:
        entry = self.entry
        assert entry is not None
        with temporary_path(entry.search_dir, front=entry.file is not None):
            target = _rename(import_target, entry)
            try:
                module = target(**self.settings.options)
            except InfermillError:
                raise
            except Exception as exc:  # noqa: BLE001 - user code
                raise ModelLoadError(
                    f"the factory '{entry.text}' raised {type(exc).__name__}: {exc}",
                    hint="fix the factory or [model.options]; rerun with --debug to see the traceback",
                ) from exc
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(
                f"the factory '{entry.text}' returned a {type(module).__name__}, not a torch.nn.Module",
                hint="return the model (an nn.Module instance) from the factory",
            )
        if self.weights:
            state = _read_state_dict(torch, self.weights)
            try:
                module.load_state_dict(state, strict=self.settings.strict)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"the weights in {self.weights} do not fit the module from '{entry.text}': {exc}",
                    hint="build the same architecture the weights were saved from, or set strict = false to "
                    "load the matching entries only",
                ) from exc
        return module

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        torch = import_torch(self.kind)
        device = self.device or torch.device("cpu")
        mode = self.settings.inputs
        if mode == "tensor":
            return pin({"x": torch.from_numpy(_float_matrix(batch)).to(self._dtype or torch.float32)}, device)["x"]
        tensors = {
            name: _column_tensor(torch, batch.column(i), name, self._dtype) for i, name in enumerate(batch.schema.names)
        }
        return pin(tensors, device)

    def predict(self, inputs: Any) -> Any:
        if self.module is None or self.device is None:
            raise ModelLoadError("TorchModel.predict() called before setup()")
        torch = import_torch(self.kind)
        mode = self.settings.inputs
        empty = _rows(inputs) == 0
        if empty:
            inputs = _one_zero_row(torch, inputs)  # run one row for the output types, return none of it
        try:
            with torch.inference_mode():
                if mode == "tensor":
                    result = self.module(inputs.to(self.device, non_blocking=self.device.type == "cuda"))
                elif mode == "dict":
                    result = self.module(to_device(inputs, self.device))
                else:
                    result = self.module(**to_device(inputs, self.device))
                return _to_cpu(torch, result, 0 if empty else None)
        except Exception as exc:
            if classify_torch_error(exc) == "oom":
                release_cached_memory(self.device)
            raise

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        names = self.outputs
        if isinstance(result, dict):
            missing = [n for n in names if n not in result]
            if missing:
                raise ModelLoadError(
                    f"the model returned a dict with keys {sorted(result)}, which lacks the output(s) {missing}",
                    hint="name outputs after the keys in 'model.outputs'",
                )
            return to_columns({n: _column(result[n], n) for n in names}, names, num_rows)
        if isinstance(result, tuple):
            if len(result) != len(names):
                raise ModelLoadError(
                    f"the model returned {len(result)} tensors, but 'model.outputs' has {len(names)} names {names}",
                    hint=f"give {len(result)} output names, one per returned tensor, in order",
                )
            return to_columns({n: _column(v, n) for n, v in zip(names, result, strict=True)}, names, num_rows)
        if result.ndim == 2 and result.shape[1] == len(names) and len(names) > 1:
            return to_columns({n: result[:, i] for i, n in enumerate(names)}, names, num_rows)
        if len(names) > 1:
            raise ModelLoadError(
                f"the model returned one tensor of shape {list(result.shape)}, but 'model.outputs' has "
                f"{len(names)} names",
                hint="give one name per column of the result, or one name for a list column",
            )
        return to_columns(_column(result, names[0]), names, num_rows)

    def classify_error(self, exc: BaseException) -> Literal["oom", "fatal"] | None:
        return classify_torch_error(exc)

    def fingerprint(self) -> str:
        if self.path is not None:
            return file_digest(self.path)
        assert self.entry is not None
        source = source_file(self.entry)
        blob = json.dumps(
            {
                "factory": self.entry.text,
                "source": file_digest(source) if source else "no-source-file",
                "weights": file_digest(self.weights) if self.weights else None,
                "options": self.settings.options,
            },
            sort_keys=True,
            default=repr,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def detect_format(path: str) -> Format:
    """TorchScript, torch.export or a pickle checkpoint, from the archive's entries (nothing is loaded)."""
    if not zipfile.is_zipfile(path):
        return "checkpoint"  # the legacy torch.save format is a bare pickle stream
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    tails = {name.partition("/")[2] for name in names}
    if any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "export"
    return "checkpoint"


def _factory_entry(text: str, spec: JobSpec) -> EntryPoint:
    entry: EntryPoint = _rename(parse_entrypoint, text, spec.base_dir, spec.resolve)
    return entry


def _rename(func: Any, *args: Any) -> Any:
    """Call an entrypoint helper, pointing its messages at 'model.factory' instead of 'model.entrypoint'."""
    try:
        return func(*args)
    except ModelLoadError as exc:
        message = exc.message.replace("'model.entrypoint'", "'model.factory'").replace("entrypoint", "factory")
        raise ModelLoadError(message, hint=exc.hint) from exc


def _read_state_dict(torch: Any, path: str) -> dict[str, Any]:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise missing_extra("torch", "safetensors") from exc
        try:
            state: dict[str, Any] = load_file(path)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
            raise ModelLoadError(f"cannot read {path} as safetensors: {exc}") from exc
        return state
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types
        raise ModelLoadError(
            f"cannot read the state dict in {path} with weights_only=True: {type(exc).__name__}",
            hint="save it with torch.save(model.state_dict(), path) or safetensors.torch.save_file",
        ) from exc
    if not isinstance(loaded, dict):
        raise ModelLoadError(
            f"{path} holds a {type(loaded).__name__}, not a state dict",
            hint="save it with torch.save(model.state_dict(), path) or safetensors.torch.save_file",
        )
    return loaded


_F32 = np.dtype(np.float32)


def _check_type(column: pa.Array, name: str) -> None:
    t = column.type
    if pa.types.is_fixed_size_list(t):
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise ModelLoadError(
            f"feature '{name}' has type {column.type}, but kind 'torch' takes numbers, booleans or fixed-size "
            "lists of numbers",
            hint="encode it as numbers before scoring, or leave it out of 'model.features'",
        )


def _list_values(column: pa.Array, name: str, dtype: np.dtype[Any] | None) -> np.ndarray:
    if column.null_count:
        raise ItemError(f"feature '{name}' has {column.null_count} null list(s)")
    width = column.type.list_size
    flat = column.flatten()
    if flat.null_count:
        raise ItemError(f"feature '{name}' has null values inside its lists")
    values: np.ndarray = flat.to_numpy(zero_copy_only=False)
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    return values.reshape(len(column), width)


def _float_matrix(batch: pa.RecordBatch) -> np.ndarray:
    parts = []
    for i, name in enumerate(batch.schema.names):
        column = batch.column(i)
        _check_type(column, name)
        if pa.types.is_fixed_size_list(column.type):
            parts.append(_list_values(column, name, _F32))
        else:
            parts.append(column_values(column, name, _F32).astype(_F32, copy=False).reshape(-1, 1))
    if not parts:
        return np.empty((batch.num_rows, 0), dtype=_F32)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _column_tensor(torch: Any, column: pa.Array, name: str, dtype: Any) -> Any:
    _check_type(column, name)
    t = column.type.value_type if pa.types.is_fixed_size_list(column.type) else column.type
    if pa.types.is_fixed_size_list(column.type):
        values = _list_values(column, name, None)
    elif pa.types.is_floating(t) or column.null_count:
        values = column_values(column, name, np.dtype(np.float64))
    else:
        values = column.to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(t) and not column.null_count:
        return torch.from_numpy(np.asarray(values, dtype=bool))
    if pa.types.is_integer(t) and not column.null_count:
        return torch.from_numpy(np.asarray(values, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(dtype or torch.float32)


def _rows(inputs: Any) -> int:
    if isinstance(inputs, dict):
        return int(next(iter(inputs.values())).shape[0]) if inputs else 0
    return int(inputs.shape[0])


def _one_zero_row(torch: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return {k: torch.zeros((1, *v.shape[1:]), dtype=v.dtype) for k, v in inputs.items()}
    return torch.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype)


def _to_cpu(torch: Any, result: Any, rows: int | None) -> Any:
    """The model's result with every tensor as a numpy array (cut to ``rows`` rows when given)."""
    if isinstance(result, torch.Tensor):
        array = to_numpy(result)
        return array[:rows] if rows is not None and array.ndim else array
    if isinstance(result, dict):
        return {str(k): _to_cpu(torch, v, rows) for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return tuple(_to_cpu(torch, v, rows) for v in result)
    raise ModelLoadError(
        f"the model returned a {type(result).__name__}; kind 'torch' takes a tensor, a tuple of tensors or a "
        "dict of tensors",
        hint="return tensors from forward(), or wrap the model to do so",
    )


def _column(value: Any, name: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise ModelLoadError(f"output '{name}' is a scalar; the model must return one value per row")
        if value.ndim == 2 and value.shape[1] == 1:
            return value.reshape(-1)
        if value.ndim > 2:
            raise ModelLoadError(
                f"output '{name}' has shape {list(value.shape)}; kind 'torch' writes [N] or [N, k] results",
                hint="flatten or pool the result inside the model",
            )
    return value
