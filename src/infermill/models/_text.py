"""Text and image feature columns for the text-model kinds (hf, sentence-transformers), and the
length-sorted micro batches they run the model on.

A text that cannot be read (null, or bytes that are not UTF-8) is an :class:`ItemError`: the engine
bisects the batch and dead-letters that row alone. A column of the wrong type is a ModelLoadError.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError
from .base import file_digest

T = TypeVar("T")

__all__ = ["chunks", "folder_digest", "pick_column", "text_values"]

_SKIP_DIRS = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def pick_column(names: Sequence[str], wanted: str | None, kind: str, key: str = "text_column") -> str:
    """The feature column to read: ``wanted`` (the ``key`` setting), else the only feature."""
    if wanted is not None:
        if wanted not in names:
            raise ModelLoadError(
                f"'model.{key}' = {wanted!r} is not among the feature columns {list(names)}",
                hint=f"add it to 'model.features', or set {key} to one of them",
            )
        return wanted
    if len(names) != 1:
        raise ModelLoadError(
            f"kind '{kind}' reads one column, but got {len(names)} feature columns {list(names)}",
            hint=f'set [model] {key} = "..." to the column to read, or features = ["..."]',
        )
    return names[0]


def text_values(column: pa.Array, name: str, kind: str) -> list[str]:
    """The column's values as Python strings (string columns, or binary columns holding UTF-8)."""
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = column.type
    textual = _is(t, "is_string", "is_large_string", "is_string_view")
    binary = _is(t, "is_binary", "is_large_binary", "is_binary_view")
    if not (textual or binary):
        raise ModelLoadError(
            f"feature '{name}' has type {t}, but kind '{kind}' reads text",
            hint="give it a string column (or binary holding UTF-8 text)",
        )
    if column.null_count:
        row = next(i for i, valid in enumerate(column.is_valid().to_pylist()) if not valid)
        raise ItemError(f"feature '{name}' is null in row {row} of the batch; there is no text to read")
    if textual:
        try:
            values: list[str] = column.to_pylist()
            return values
        except UnicodeDecodeError:  # Arrow trusts the writer; a string column can still hold bad bytes
            column = column.cast(pa.large_binary() if pa.types.is_large_string(t) else pa.binary())
    texts = []
    for i, raw in enumerate(column.to_pylist()):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ItemError(
                f"feature '{name}' in row {i} of the batch is not valid UTF-8 text ({exc.reason} at byte {exc.start})",
                hint="decode or clean the text before scoring; this row is dead-lettered",
            ) from exc
    return texts


def _is(t: pa.DataType, *checks: str) -> bool:
    # string_view and binary_view exist from pyarrow 16 on
    return any(getattr(pa.types, check, lambda _: False)(t) for check in checks)


def chunks(lengths: Sequence[int], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row order longest first, cut into micro batches of ``size``: similar lengths share a batch, so
    little padding is computed. Returns the order and the row indices of each micro batch."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return order, [order[i : i + size] for i in range(0, len(order), size)]


def take_rows(
    parts: Sequence[dict[str, Any]], sizes: Sequence[int], index: Sequence[int] | np.ndarray
) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows at ``index`` of micro batches ``parts`` (positions counted over the parts in order; ``sizes``:
    rows of each part), still in their micro batches: each part keeps its selected rows of every batch-first
    value (tensors of the tokenizer's output) and every other value as it is. Returns the parts and sizes.
    ``[model] accelerate`` compares the original and the accelerated model on such a sample of a batch."""
    wanted = np.unique(np.asarray(index, dtype=np.int64))
    starts = np.cumsum([0, *sizes])
    taken, taken_sizes = [], []
    for part, size, start in zip(parts, sizes, starts, strict=False):
        local = (wanted[(wanted >= start) & (wanted < start + size)] - start).tolist()
        if local:
            taken.append({k: v[local] if _rows_of(v) == size else v for k, v in part.items()})
            taken_sizes.append(len(local))
    return taken, taken_sizes


@dataclass(frozen=True)
class RowPicker(Generic[T]):
    """``prepared.iloc[index]``: the pandas-style row access ``infermill.accelerate.verify`` uses to cut its
    sample from a batch's inputs, for a prepared batch of a kind (``take`` is its ``take_rows``)."""

    take: Callable[[Sequence[int] | np.ndarray], T]

    def __getitem__(self, index: Sequence[int] | np.ndarray) -> T:
        return self.take(index)


def _rows_of(value: Any) -> int | None:
    """Rows of a batch-first tensor or array, None for anything else."""
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def folder_digest(path: str) -> str:
    """sha256 over a model folder's files (relative names and contents); unchanged files are hashed once
    per process."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            full = os.path.join(root, name)
            stat = os.stat(full)
            key = (full, stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if key not in _DIGESTS:
                _DIGESTS[key] = file_digest(full)
            digest.update(f"{os.path.relpath(full, path)}:{_DIGESTS[key]}\n".encode())
    return digest.hexdigest()[:16]
