"""Every source runs the shipped conformance suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from infermill.sources.base import Source
from infermill.spec import JobSpec
from infermill.testing.sources import InMemorySource, SourceConformance, source_spec
from tests.sources.helpers import write_rows


class TestParquetConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        data = write_rows(tmp_path / "data", rows, "parquet", row_group_size=4)
        return source_spec(str(data), format="parquet", shard_rows=6, **input_options)


class TestCsvConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        data = write_rows(tmp_path / "data", rows, "csv")
        return source_spec(str(data), format="csv", shard_bytes=90, **input_options)


class TestTsvConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        data = write_rows(tmp_path / "data", rows, "tsv")
        return source_spec(str(data / "*.tsv"), shard_bytes=70, **input_options)


class TestJsonlConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        data = write_rows(tmp_path / "data", rows, "jsonl")
        return source_spec(str(data / "**" / "*.jsonl"), shard_bytes=150, **input_options)


class TestInMemoryConformance(SourceConformance):
    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        tables: dict[str, pa.Table] = self.__dict__.setdefault("tables", {})
        spec = source_spec(f"table-{len(tables)}", shard_rows=6, **input_options)
        tables[spec.input.path] = pa.Table.from_pylist(rows)
        return spec

    def open_source(self, spec: JobSpec) -> Source:
        return InMemorySource(spec, self.__dict__["tables"][spec.input.path])
