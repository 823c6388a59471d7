"""What every file-backed source shares: the listing, the dataset schema, projection and synthetic ids.

A source is planned once by the coordinator and may be pickled to worker processes, so everything that
is costly to learn (the dataset schema) is cached on the instance and survives pickling, while the
filesystem handle and listing are rebuilt lazily where needed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.spec import AbstractFileSystem

from ..errors import InputError
from ..spec import JobSpec
from ._fs import InputFile, InputListing, display_path, list_input, open_filesystem
from .base import SYNTHETIC_ID, Source

__all__ = ["FileSource", "synthetic_ids"]


def synthetic_ids(prefix: str, start: int, count: int) -> pa.Array:
    """String ids ``f"{prefix}{i}"`` for ``i`` in ``start .. start + count - 1``."""
    numbers = pa.array(np.arange(start, start + count, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


class FileSource(Source):
    """Base of the file formats: lists the input and checks column names against the dataset schema."""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._fs: AbstractFileSystem | None = None
        self._listing: InputListing | None = None
        self._data_schema: pa.Schema | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The filesystem may hold sockets; the schema is kept so workers need not list the input again.
        state["_fs"] = None
        state["_listing"] = None
        return state

    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._fs = self._listing.fs if self._listing else open_filesystem(self.spec)[0]
        return self._fs

    def open_file(self, path: str) -> Any:
        """Open an input file for reading; a file gone since planning is an :class:`InputError`."""
        try:
            return self.fs.open(path, "rb")
        except FileNotFoundError:
            raise InputError(
                f"input file not found: {display_path(path)}",
                hint="the input changed since the job was planned; restore it or start the job afresh",
            ) from None

    def listing(self) -> InputListing:
        """The sorted input files (listed once per instance)."""
        if self._listing is None:
            self._listing = list_input(self.spec, self.format)
            self._fs = self._listing.fs
        return self._listing

    def data_schema(self) -> pa.Schema:
        """The columns stored in the input (no synthetic id), all nullable, without metadata."""
        if self._data_schema is None:
            schema = self._infer_schema(self.listing().files)
            schema = pa.schema([pa.field(f.name, f.type) for f in schema])
            if self.spec.input.id_column is None and SYNTHETIC_ID in schema.names:
                raise InputError(
                    f"the input has a column named {SYNTHETIC_ID!r}, the name of the synthetic row id",
                    hint=f"set [input] id_column = {SYNTHETIC_ID!r} to use it as the id, or rename it",
                )
            self._data_schema = schema
        return self._data_schema

    @abstractmethod
    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        """The dataset schema, from the first file's metadata or first rows."""

    def schema(self) -> pa.Schema:
        """The schema of ``read(..., columns=None)`` without a configured projection: the input's
        columns, then ``_row_id`` when the ids are synthetic."""
        schema = self.data_schema()
        if self.spec.input.id_column is None:
            schema = schema.append(pa.field(SYNTHETIC_ID, pa.string()))
        return schema

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
                where = display_path(self.listing().files[0].path)
                raise InputError(
                    f"column {name!r} not found in {where}; available columns: {', '.join(schema.names)}",
                    hint="check [input] columns and id_column, [model] features and [output] keep",
                )
            if name not in out:
                out.append(name)
        return out

    def target_schema(self, names: Sequence[str]) -> pa.Schema:
        """The dataset schema restricted to ``names``: every batch is cast to it, so shards agree."""
        schema = self.data_schema()
        return pa.schema([schema.field(n) for n in names])

    def finish(self, batch: pa.RecordBatch, target: pa.Schema, where: str, id_prefix: str, id_start: int) -> (
        pa.RecordBatch
    ):
        """Select and cast ``batch``'s columns to ``target`` (so that every shard agrees on types, even when
        files differ), then append the synthetic ids ``f"{id_prefix}{id_start + i}"`` if ids are synthetic.
        """
        arrays = [self._column(batch, field, where) for field in target]
        schema = target
        if self.spec.input.id_column is None:
            arrays.append(synthetic_ids(id_prefix, id_start, batch.num_rows))
            schema = target.append(pa.field(SYNTHETIC_ID, pa.string()))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    @staticmethod
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
