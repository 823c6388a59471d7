"""Model adapters, one per ``[model] kind``, imported on first use.

``MODEL_KINDS`` maps a kind to ``"module:Class"`` and the extra that provides its dependencies.
"""

from __future__ import annotations

import importlib

from ..errors import ModelLoadError
from ..spec import JobSpec
from .base import ModelAdapter

__all__ = ["MODEL_KINDS", "ModelAdapter", "adapter_class", "load_adapter"]

MODEL_KINDS: dict[str, tuple[str, str | None]] = {
    "python": ("infermill.models.python:PythonModel", None),
    "sklearn": ("infermill.models.sklearn:SklearnModel", "sklearn"),
    "onnx": ("infermill.models.onnx:OnnxModel", "onnx"),
    "torch": ("infermill.models.torch_model:TorchModel", "torch"),
    "hf": ("infermill.models.hf:HFModel", "hf"),
    "sentence-transformers": ("infermill.models.sentence_transformers_model:SentenceModel", "sentence-transformers"),
    "llm": ("infermill.models.llm:LlmModel", "llm"),
    "http": ("infermill.models.http:HttpModel", "http"),
    "mlflow": ("infermill.models.mlflow_model:MlflowModel", "mlflow"),
}


def adapter_class(kind: str) -> type[ModelAdapter]:
    """The adapter class registered for ``kind``."""
    if kind not in MODEL_KINDS:
        raise ModelLoadError(
            f"unknown model kind '{kind}' (from 'model.kind')",
            hint=f"use one of: {', '.join(sorted(MODEL_KINDS))}",
        )
    target, _extra = MODEL_KINDS[kind]
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[ModelAdapter] = getattr(module, cls_name)
    return cls


def load_adapter(spec: JobSpec, *, threads: int = 1, device: str | None = None) -> ModelAdapter:
    """Instantiate (not set up) the adapter for ``spec.model``; ``device``: see ``ModelAdapter.assigned_device``."""
    return adapter_class(spec.model.kind)(spec, threads=threads, device=device)


def missing_extra(kind: str, module: str) -> ModelLoadError:
    """The error to raise when an adapter's library is not installed."""
    extra = MODEL_KINDS.get(kind, ("", kind))[1] or kind
    return ModelLoadError(
        f"model kind '{kind}' needs the '{module}' package, which is not installed",
        hint=f"pip install 'infermill[{extra}]'",
    )
