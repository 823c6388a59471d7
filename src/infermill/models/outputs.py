"""Normalising what a model returns into named Arrow columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ItemError

__all__ = ["to_array", "to_columns"]


def to_array(values: Any, name: str, num_rows: int) -> pa.Array:
    """One output column as an Arrow array of ``num_rows`` values.

    2-D numeric arrays become fixed-size lists (e.g. embeddings); anything Arrow can convert is accepted.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        array = values
    else:
        if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
            values = values.to_numpy()
        if isinstance(values, np.ndarray) and values.ndim == 2:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            array = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        elif isinstance(values, np.ndarray) and values.ndim > 2:
            raise ItemError(f"output '{name}' has {values.ndim} dimensions; return at most 2 per batch")
        else:
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise ItemError(f"output '{name}' cannot be converted to a column: {exc}") from exc
    if len(array) != num_rows:
        raise ItemError(
            f"output '{name}' has {len(array)} values for a batch of {num_rows} rows; "
            "predict must return one value per input row, in order"
        )
    return array


def to_columns(result: Any, names: list[str], num_rows: int) -> dict[str, pa.Array]:
    """Normalise a model result: a mapping, a DataFrame, an Arrow table/batch, or a single array (when
    there is exactly one output name)."""
    if isinstance(result, (pa.Table, pa.RecordBatch)):
        result = {n: result.column(n) for n in result.schema.names}
    elif hasattr(result, "columns") and hasattr(result, "iloc"):  # pandas DataFrame
        result = {str(c): result[c] for c in result.columns}
    if isinstance(result, Mapping):
        missing = [n for n in names if n not in result]
        if missing:
            raise ItemError(
                f"model result lacks output column(s) {missing}; it returned {sorted(map(str, result))}",
            )
        return {n: to_array(result[n], n, num_rows) for n in names}
    if len(names) == 1:
        return {names[0]: to_array(result, names[0], num_rows)}
    if isinstance(result, np.ndarray) and result.ndim == 2 and result.shape[1] == len(names):
        return {n: to_array(result[:, i], n, num_rows) for i, n in enumerate(names)}
    raise ItemError(
        f"model returned {type(result).__name__}, but {len(names)} outputs are configured {names}; "
        "return a mapping of output name to values"
    )
