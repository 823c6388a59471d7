"""Column handling every source shares: the dataset schema, projection, type conformance, synthetic ids.

Every batch of one dataset must have the same columns and types, whatever file or shard it comes from
(sinks write one file per shard, and ``rebatch`` joins pieces of several files), so batches are cast to
the dataset schema, learnt once from the first file (or the in-memory table).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..spec import JobSpec
from .base import SYNTHETIC_ID, Source

__all__ = ["ColumnSource", "synthetic_ids"]


def synthetic_ids(prefix: str, start: int, count: int) -> pa.Array:
    """String ids ``f"{prefix}{i}"`` for ``i`` in ``start .. start + count - 1``."""
    numbers = pa.array(np.arange(start, start + count, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


class ColumnSource(Source):
    """A source with a known dataset schema: checks column names and shapes batches to that schema."""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._data_schema: pa.Schema | None = None

    @abstractmethod
    def _load_schema(self) -> pa.Schema:
        """The dataset schema, from the first file's metadata or first rows."""

    @abstractmethod
    def schema_origin(self) -> str:
        """Where the dataset schema comes from, for messages (e.g. the first file's path)."""

    def data_schema(self) -> pa.Schema:
        """The columns stored in the input (no synthetic id), all nullable, without metadata."""
        if self._data_schema is None:
            schema = pa.schema([pa.field(f.name, f.type) for f in self._load_schema()])
            if self.spec.input.id_column is None and SYNTHETIC_ID in schema.names:
                raise InputError(
                    f"the input has a column named {SYNTHETIC_ID!r}, the name of the synthetic row id",
                    hint=f"set [input] id_column = {SYNTHETIC_ID!r} to use it as the id, or rename it",
                )
            self._data_schema = schema
        return self._data_schema

    def use_schema(self, schema: pa.Schema) -> None:
        if self._data_schema is None:
            self._data_schema = schema

    def schema(self) -> pa.Schema:
        """The stored columns (no synthetic id: the engine picks default features from this list).
        ``read(..., columns=None)`` yields these, then ``_row_id`` when ids are synthetic."""
        return self.data_schema()

    def check_columns(self) -> None:
        """Fail early (at plan time) when the id column or the configured projection is unknown."""
        self.projection(None)

    def projection(self, columns: Sequence[str] | None) -> list[str]:
        """The stored columns to read, in order: ``columns`` (or ``[input] columns``, or all), plus the
        configured id column; the synthetic id is left out since the source makes it."""
        schema = self.data_schema()
        wanted = list(columns) if columns is not None else list(self.spec.input.columns or schema.names)
        if self.spec.input.id_column is not None:
            wanted.append(self.spec.input.id_column)
        out: list[str] = []
        for name in wanted:
            if name == SYNTHETIC_ID and self.spec.input.id_column is None:
                continue
            if name not in schema.names:
                raise InputError(
                    f"column {name!r} not found in {self.schema_origin()}; "
                    f"available columns: {', '.join(schema.names)}",
                    hint="check [input] columns and id_column, [model] features and [output] keep",
                )
            if name not in out:
                out.append(name)
        return out

    def target_schema(self, names: Sequence[str]) -> pa.Schema:
        """The dataset schema restricted to ``names``, in that order."""
        schema = self.data_schema()
        return pa.schema([schema.field(n) for n in names])

    def finish(
        self, batch: pa.RecordBatch, target: pa.Schema, where: str, id_prefix: str, id_start: int
    ) -> pa.RecordBatch:
        """Select and cast ``batch``'s columns to ``target``, then append the synthetic ids
        ``f"{id_prefix}{id_start + i}"`` when no id column is configured."""
        arrays = [_column(batch, field, where) for field in target]
        schema = target
        if self.spec.input.id_column is None:
            arrays.append(synthetic_ids(id_prefix, id_start, batch.num_rows))
            schema = target.append(pa.field(SYNTHETIC_ID, pa.string()))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _column(batch: pa.RecordBatch, field: pa.Field, where: str) -> pa.Array:
    index = batch.schema.get_field_index(field.name)
    if index < 0:
        raise InputError(
            f"column {field.name!r} is missing in {where}",
            hint="every input file must have the columns of the first file",
        )
    array = batch.column(index)
    if array.type == field.type:
        return array
    try:
        return array.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"column {field.name!r} in {where} is {array.type} and cannot be read as {field.type} "
            f"(its type in the first file): {exc}",
            hint="give the column one type in every input file",
        ) from None
