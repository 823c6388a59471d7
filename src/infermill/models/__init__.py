"""Model adapters, one per ``[model] kind``, imported on first use.

The kinds are plugins of :mod:`infermill.registry` (group ``models``): a kind maps to ``"module:Class"``
and the extra that provides its dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import registry
from ..errors import ModelLoadError
from ..spec import JobSpec

if TYPE_CHECKING:
    from .base import ModelAdapter


def __getattr__(name: str) -> Any:
    # The contract imports numpy and pyarrow: importing this package (for ``models.settings``) must not.
    if name == "ModelAdapter":
        from .base import ModelAdapter

        return ModelAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["MODEL_KINDS", "ModelAdapter", "adapter_class", "load_adapter"]

MODEL_KINDS: dict[str, tuple[str, str | None]] = {
    name: (str(plugin.target), plugin.extra) for name, plugin in registry.builtin("models").items()
}
"""The built-in kinds (``infermill.registry`` also holds the kinds that plugins add)."""


def adapter_class(kind: str) -> type[ModelAdapter]:
    """The adapter class registered for ``kind`` (ImportError when its library is missing)."""
    plugin = registry.find("models", kind)
    if plugin is None:
        error = registry.unknown("models", kind)
        raise ModelLoadError(f"unknown model kind '{kind}' (from 'model.kind')", hint=error.hint)
    cls: type[ModelAdapter] = registry.import_target(plugin)
    return cls


def load_adapter(spec: JobSpec, *, threads: int = 1, device: str | None = None) -> ModelAdapter:
    """Instantiate (not set up) the adapter for ``spec.model``; ``device``: see ``ModelAdapter.assigned_device``."""
    return adapter_class(spec.model.kind)(spec, threads=threads, device=device)


def missing_extra(kind: str, module: str) -> ModelLoadError:
    """The error to raise when an adapter's library is not installed."""
    plugin = registry.find("models", kind)
    extra = (plugin.extra if plugin is not None else None) or kind
    return ModelLoadError(
        f"model kind '{kind}' needs the '{module}' package, which is not installed",
        hint=f"pip install 'infermill[{extra}]'",
    )
