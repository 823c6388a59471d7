"""Input sources: plan deterministic shards of the input, then stream each shard as Arrow batches.

:func:`open_source` picks the source for ``spec.input_format()`` from :data:`SOURCE_FORMATS`, a registry
of ``"module:Class"`` strings imported on first use (so an unused format costs no import).

Example::

    source = open_source(spec)
    for shard in source.plan():
        for batch in source.read(shard, batch_size=8192):
            ...
"""

from __future__ import annotations

import importlib

from ..errors import SpecError
from ..spec import JobSpec
from .base import SYNTHETIC_ID, Fragment, Shard, Source, rebatch

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

SOURCE_FORMATS: dict[str, str] = {
    "parquet": "infermill.sources.parquet:ParquetSource",
    "csv": "infermill.sources.text:CsvSource",
    "jsonl": "infermill.sources.text:JsonlSource",
    "openai-batch": "infermill.sources.openai_batch:OpenAIBatchSource",
}
"""Input format name -> ``"module:Class"`` of its :class:`Source`."""


def source_class(fmt: str) -> type[Source]:
    """The :class:`Source` subclass registered for ``fmt``."""
    try:
        target = SOURCE_FORMATS[fmt]
    except KeyError:
        raise SpecError(
            f"unknown input format {fmt!r}", hint=f"use one of: {', '.join(sorted(SOURCE_FORMATS))}"
        ) from None
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"{target} is not a Source subclass")
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
    return source_class(input_format(spec))(spec)
