"""Input sources: plan deterministic shards of the input, then stream each shard as Arrow batches.

:func:`open_source` picks the source for ``spec.input_format()`` from :mod:`infermill.registry` (group
``sources``), imported on first use (so an unused format costs no import).

Example::

    source = open_source(spec)
    for shard in source.plan():
        for batch in source.read(shard, batch_size=8192):
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import registry
from ..errors import SpecError
from ..spec import JobSpec

if TYPE_CHECKING:
    from .base import SYNTHETIC_ID, Fragment, Shard, Source, rebatch

_LAZY = {"SYNTHETIC_ID", "Fragment", "Shard", "Source", "rebatch"}


def __getattr__(name: str) -> Any:
    # The contract imports pyarrow: importing this package (for ``sources.settings``, say) must not.
    if name in _LAZY:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "SOURCE_FORMATS",
    "SYNTHETIC_ID",
    "Fragment",
    "Shard",
    "Source",
    "input_format",
    "open_source",
    "rebatch",
    "source_class",
]

SOURCE_FORMATS: dict[str, str] = {name: str(p.target) for name, p in registry.builtin("sources").items()}
"""The built-in input formats -> ``"module:Class"`` (``infermill.registry`` also holds plugins')."""


def source_class(fmt: str) -> type[Source]:
    """The :class:`Source` subclass registered for ``fmt``."""
    from .base import Source

    cls = registry.load("sources", fmt)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"the input format {fmt!r} is registered as {cls!r}, which is not a Source subclass")
    return cls


def input_format(spec: JobSpec) -> str:
    """``spec.input_format()``, or for a folder (or glob) the format of the files in it, when they all
    have one."""
    try:
        return spec.input_format()
    except SpecError:
        from ._fs import infer_format

        fmt = infer_format(spec)
        if fmt is None:
            raise
        return fmt


def open_source(spec: JobSpec) -> Source:
    """The source that reads ``spec``'s input (chosen by :func:`input_format`); nothing is read yet."""
    fmt = input_format(spec)
    spec.input_settings(fmt)  # a folder's format was not known when the spec was built: check its keys now
    return source_class(fmt)(spec)
