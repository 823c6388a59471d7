"""The format registry and the public names of the sources package."""

from __future__ import annotations

from pathlib import Path

import pytest

import infermill.sources as sources
import infermill.testing as testing
from infermill.errors import SpecError
from infermill.sources import SOURCE_FORMATS, open_source, source_class
from infermill.sources.parquet import ParquetSource
from infermill.sources.text import CsvSource, JsonlSource
from infermill.testing.sources import source_spec


def test_public_names() -> None:
    assert sources.__all__ == [
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
    assert {"InMemorySource", "SourceConformance", "conformance_rows", "source_spec"} <= set(testing.__all__)


def test_every_input_format_has_a_source() -> None:
    assert sorted(SOURCE_FORMATS) == ["arrow", "csv", "jsonl", "openai-batch", "parquet"]
    assert source_class("parquet") is ParquetSource
    assert source_class("csv") is CsvSource
    assert source_class("jsonl") is JsonlSource


@pytest.mark.parametrize(
    ("path", "options", "cls"),
    [
        ("data/x.parquet", {}, ParquetSource),
        ("data/*.pq", {}, ParquetSource),
        ("data/x.tsv", {}, CsvSource),
        ("s3://bucket/x.ndjson", {}, JsonlSource),
        ("data/folder", {"format": "csv"}, CsvSource),
    ],
)
def test_open_source_picks_by_format(path: str, options: dict[str, str], cls: type) -> None:
    # Nothing is read until plan(), so the paths need not exist.
    source = open_source(source_spec(path, **options))
    assert type(source) is cls and source.describe()["format"] == cls.format


def test_unknown_format() -> None:
    with pytest.raises(SpecError, match="unknown input format 'xml'") as info:
        source_class("xml")
    assert "csv, jsonl, openai-batch, parquet" in str(info.value)


def test_opening_a_source_reads_nothing(tmp_path: Path) -> None:
    source = open_source(source_spec(str(tmp_path / "nothing-here.csv")))
    assert source.id_column == "_row_id"
