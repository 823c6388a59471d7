"""Which input columns are read, given to the model, and kept in the output."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ..errors import InputError, SpecError
from ..sources.base import SYNTHETIC_ID
from ..spec import JobSpec

__all__ = ["Columns", "resolve_columns"]


@dataclass(frozen=True)
class Columns:
    id: str
    """The id column: ``input.id_column`` or the synthetic ``_row_id``."""
    features: list[str]
    """Columns given to the model, in order."""
    keep: list[str]
    """Input columns copied to the output next to the id."""
    read: list[str]
    """Input columns the source reads (the synthetic id is added by the source)."""
    schema: pa.Schema | None = None
    """The input's schema as planned: workers hand it to their source (``Source.use_schema``), which
    would otherwise list the whole input again, 20,000 files for a folder of small files, to learn it."""


def resolve_columns(spec: JobSpec, schema: pa.Schema) -> Columns:
    """Check the configured columns against the input's schema and derive what to read."""
    names = list(schema.names)
    available = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
    where = f"the input ({spec.input.path})"

    def check(column: str, key: str) -> None:
        if column not in names:
            raise InputError(
                f"column '{column}' (from '{key}') is not in {where}",
                hint=f"available columns: {available}",
            )

    id_column = spec.input.id_column
    if id_column:
        check(id_column, "input.id_column")
    projection = spec.input.columns
    if projection:
        for column in projection:
            check(column, "input.columns")
    base = projection or names
    features = list(spec.model.features) if spec.model.features else [c for c in base if c != id_column]
    if not features:
        raise InputError(f"no feature columns left in {where}", hint="set [model] features = [...]")
    for column in features:
        check(column, "model.features")
    keep = [c for c in spec.output.keep if c != (id_column or SYNTHETIC_ID)]
    for column in keep:
        check(column, "output.keep")
    _check_partition_columns(spec, [id_column or SYNTHETIC_ID, *keep])
    read: list[str] = []
    for column in ([id_column] if id_column else []) + features + keep:
        if column not in read:
            read.append(column)
    return Columns(id=id_column or SYNTHETIC_ID, features=features, keep=keep, read=read, schema=schema)


def _check_partition_columns(spec: JobSpec, kept: list[str]) -> None:
    """``[output] partition_by`` names result columns: kept input columns or declared model outputs (a kind
    whose outputs are not declared is checked when its first result is written)."""
    partition = list(getattr(spec.output_settings(), "partition_by", None) or [])
    outputs = spec.model.outputs
    for column in partition:
        if column in kept or outputs is None or column in outputs:
            continue
        raise SpecError(
            f"'output.partition_by' names {column!r}, which is not a result column (results have "
            f"{', '.join([*kept, *outputs])})",
            hint=f'keep the input column in the output (`keep = ["{column}"]` under [output]), or partition by '
            "a model output",
        )
