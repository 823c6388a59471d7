"""Choosing class-probability columns, shared by the sklearn and onnx adapters.

Both adapters follow one rule: with one configured output, the score is the probability of
``positive_class`` (default: the last class, i.e. ``1`` or ``True`` for a binary model); with one output
name per class, every class gets its own column, in the model's class order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelLoadError

__all__ = ["class_columns", "class_index"]


def class_index(labels: Sequence[Any] | np.ndarray, positive_class: Any) -> int:
    """Index of ``positive_class`` in ``labels`` (default: the last class).

    Labels are compared as values first, then as text, so ``positive_class = "1"`` in a TOML file still
    finds the integer class ``1``.
    """
    if positive_class is None:
        return len(labels) - 1
    for i, label in enumerate(labels):
        if _same(label, positive_class):
            return i
    raise ModelLoadError(
        f"positive_class {positive_class!r} is not one of the model's classes {[_plain(x) for x in labels]}",
        hint="set [model] positive_class to one of those labels, or leave it out to use the last class",
    )


def class_columns(num_outputs: int, num_classes: int, outputs: Sequence[str]) -> bool:
    """True when every class gets a column (one output name per class); False for a single score.

    Raises ModelLoadError for any other number of output names.
    """
    if num_outputs == 1:
        return False
    if num_outputs == num_classes:
        return True
    raise ModelLoadError(
        f"'model.outputs' has {num_outputs} names {list(outputs)}, but the model has {num_classes} classes",
        hint="give one name (the positive class's probability) or one name per class, in the model's "
        "class order",
    )


def _same(label: Any, wanted: Any) -> bool:
    try:
        if bool(label == wanted):
            return True
    except (TypeError, ValueError):
        pass
    return str(_plain(label)) == str(wanted)


def _plain(value: Any) -> Any:
    # numpy scalars print as np.int64(1) in reprs; users wrote 1.
    item = getattr(value, "item", None)
    return item() if callable(item) else value
