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
    assert sorted(SOURCE_FORMATS) == ["arrow", "csv", "files", "jsonl", "openai-batch", "parquet", "sql"]
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
    assert "csv, files, jsonl, openai-batch, parquet" in str(info.value)


def test_opening_a_source_reads_nothing(tmp_path: Path) -> None:
    source = open_source(source_spec(str(tmp_path / "nothing-here.csv")))
    assert source.id_column == "_row_id"


def _spec(input_: dict[str, object], output: dict[str, object] | None = None) -> object:
    from infermill.spec import JobSpec

    return JobSpec.from_dict({
        "input": input_, "model": {"kind": "python", "entrypoint": "m.py:M"}, "output": output or {"path": "o"},
    })


def test_a_formats_own_keys_are_checked_against_that_format() -> None:
    from infermill.spec import JobSpec

    spec = _spec({"path": "x.csv", "csv_delimiter": ";", "encoding": "latin-1"}, {"path": "o", "compression": "zstd"})
    assert isinstance(spec, JobSpec)
    assert (spec.input_settings().csv_delimiter, spec.input_settings().encoding) == (";", "latin-1")
    assert spec.output_settings().compression == "zstd"
    with pytest.raises(SpecError, match="unknown key 'input.include'") as info:
        _spec({"path": "x.parquet", "include": "*.txt"})  # the files format's key
    assert "the input format 'parquet' takes no key 'include'" in (info.value.hint or "")


def test_a_key_every_format_took_before_formats_had_settings_is_ignored_with_a_note() -> None:
    """A job file written before [input]/[output] keys moved into the formats still runs."""
    from infermill.spec import JobSpec

    spec = _spec({"path": "x.parquet", "shard_bytes": 1000}, {"path": "o", "format": "jsonl", "compression": "zstd"})
    assert isinstance(spec, JobSpec)
    assert spec.ignored_keys() == [
        "[input] shard_bytes does not apply to the parquet format; it is ignored (remove it)",
        "[output] compression does not apply to the jsonl format; it is ignored (remove it)",
    ]
    plain = _spec({"path": "x.parquet"}, {"path": "o", "format": "jsonl"})
    assert isinstance(plain, JobSpec) and plain.ignored_keys() == []
    with pytest.raises(SpecError, match="unknown 'input.encoding' 'klingon'"):
        _spec({"path": "x.csv", "encoding": "klingon"})


def test_a_folders_keys_are_checked_once_its_files_name_the_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(SpecError, match="unknown key 'input.shard_rowz'") as info:
        _spec({"path": str(tmp_path), "shard_rowz": 5})  # no format takes it: refused at once
    assert info.value.hint == "did you mean 'shard_rows'?"
    pq.write_table(pa.table({"x": [1.0]}), tmp_path / "a.parquet")
    spec = _spec({"path": str(tmp_path), "include": "*.txt"})  # some format takes it: wait for the files
    with pytest.raises(SpecError, match="unknown key 'input.include'"):
        open_source(spec)  # type: ignore[arg-type]
