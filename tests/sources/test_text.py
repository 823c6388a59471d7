"""CSV and JSONL: byte-range shards at any size, line endings, delimiters, types, URLs and errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermill.errors import InputError
from infermill.sources import open_source, text
from infermill.sources.base import SYNTHETIC_ID, Source
from infermill.testing.sources import source_spec


def read_all(source: Source, batch_size: int = 100) -> list[dict[str, Any]]:
    return [r for s in source.plan() for b in source.read(s, batch_size) for r in b.to_pylist()]


def csv_text(rows: list[tuple[int, str]], newline: str = "\n", trailing: bool = True) -> str:
    body = newline.join(["key,name", *(f"{k},{n}" for k, n in rows)])
    return body + (newline if trailing else "")


def jsonl_text(rows: list[tuple[int, str]], newline: str = "\n", trailing: bool = True) -> str:
    body = newline.join(json.dumps({"key": k, "name": n}) for k, n in rows)
    return body + (newline if trailing else "")


ROWS = [(i, f"name {i}" + "x" * (i % 7)) for i in range(23)]
WRITERS = {"csv": csv_text, "jsonl": jsonl_text}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("newline", "trailing"), [("\n", True), ("\n", False), ("\r\n", True), ("\r\n", False)]
)
def test_every_shard_size_reads_every_row_once(
    tmp_path: Path, fmt: str, newline: str, trailing: bool
) -> None:
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(WRITERS[fmt](ROWS, newline, trailing).encode())
    size = path.stat().st_size
    for shard_bytes in [*range(1, 40), *range(40, size + 3, 13)]:
        source = open_source(source_spec(str(path), shard_bytes=shard_bytes))
        got = read_all(source, 4)
        assert [(r["key"], r["name"]) for r in got] == ROWS, shard_bytes
        assert len({r[SYNTHETIC_ID] for r in got}) == len(ROWS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["csv", "jsonl"]),
    sizes=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=4),
    shard_bytes=st.integers(min_value=1, max_value=300),
    crlf=st.booleans(),
    batch_size=st.integers(min_value=1, max_value=9),
)
def test_several_files_any_shard_size(
    tmp_path: Path, fmt: str, sizes: list[int], shard_bytes: int, crlf: bool, batch_size: int
) -> None:
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    expected: list[tuple[int, str]] = []
    for i, count in enumerate(sizes):
        rows = [(len(expected) + j, f"n{j}" + "v" * (j % 5)) for j in range(count)]
        expected += rows
        text_ = WRITERS[fmt](rows, "\r\n" if crlf else "\n") if rows or fmt == "csv" else ""
        (folder / f"part-{i}.{fmt}").write_bytes(text_.encode())
    spec = source_spec(str(folder / f"*.{fmt}"), shard_bytes=shard_bytes)
    if not expected:
        # Nothing to plan (empty files), or header lines alone: an input without rows, which says so.
        try:
            assert open_source(spec).plan() == []
        except InputError as exc:
            assert "has no rows" in exc.message
        return
    source = open_source(spec)
    shards = source.plan()
    got = [r for s in shards for b in source.read(s, batch_size) for r in b.to_pylist()]
    assert [(r["key"], r["name"]) for r in got] == expected
    assert len({r[SYNTHETIC_ID] for r in got}) == len(expected)
    for s in shards:
        sizes_ = [b.num_rows for b in source.read(s, batch_size)]
        assert all(n == batch_size for n in sizes_[:-1])


def test_synthetic_id_format(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "a.csv"
    path.write_text("k\n1\n2\n3\n4\n")  # header 0-1, rows at bytes 2, 4, 6, 8
    source = open_source(source_spec(str(tmp_path / "**" / "*.csv"), shard_bytes=5))
    assert [r[SYNTHETIC_ID] for r in read_all(source)] == [
        "sub/a.csv@0#0",
        "sub/a.csv@0#1",
        "sub/a.csv@5#0",
        "sub/a.csv@5#1",
    ]
    path = tmp_path / "b.jsonl"
    path.write_text('{"k": 1}\n{"k": 2}\n')
    assert [r[SYNTHETIC_ID] for r in read_all(open_source(source_spec(str(path))))] == [
        "b.jsonl@0#0",
        "b.jsonl@0#1",
    ]


def test_tsv_and_explicit_delimiter(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("key\tname\n1\ta,b\n2\tc\n")
    assert read_all(open_source(source_spec(str(tmp_path / "a.tsv"))))[1] == {
        "key": 2,
        "name": "c",
        SYNTHETIC_ID: "a.tsv@0#1",
    }
    (tmp_path / "b.csv").write_text("key;name\n1;a,b\n")
    got = read_all(open_source(source_spec(str(tmp_path / "b.csv"), csv_delimiter=";")))
    assert got == [{"key": 1, "name": "a,b", SYNTHETIC_ID: "b.csv@0#0"}]


def test_quoted_newlines_need_whole_files(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('key,note\n1,"two\nlines"\n2,plain\n')
    source = open_source(source_spec(str(tmp_path / "q.csv"), split_files=False, shard_bytes=4))
    assert [r["note"] for r in read_all(source)] == ["two\nlines", "plain"]


def test_header_only_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("key,name\n")
    (tmp_path / "b.csv").write_text("")
    (tmp_path / "c.csv").write_text("key,name\n1,x")
    source = open_source(source_spec(str(tmp_path / "*.csv"), shard_bytes=3))
    assert [r["key"] for r in read_all(source)] == [1]
    assert all(f.relpath != "b.csv" for s in source.plan() for f in s.fragments)


def test_all_files_empty(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    source = open_source(source_spec(str(tmp_path / "a.jsonl")))
    assert source.plan() == []
    with pytest.raises(InputError, match="every input file is empty"):
        source.schema()


def test_blank_lines_in_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"k": 1}\n\n\n\n\n\n\n\n{"k": 2}\n\n')
    for shard_bytes in range(1, 30):
        got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"), shard_bytes=shard_bytes)))
        assert [r["k"] for r in got] == [1, 2]


def test_types_are_inferred_once_for_all_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 10)
    # "v" is empty in the sample (so it becomes a string), "n" looks like int64 in every shard.
    (tmp_path / "a.csv").write_text("n,v\n1,\n2,\n3,\n4,7\n5,x\n")
    source = open_source(source_spec(str(tmp_path / "a.csv"), shard_bytes=6))
    assert source.schema() == pa.schema([("n", pa.int64()), ("v", pa.string())])
    schemas = {b.schema for s in source.plan() for b in source.read(s, 100)}
    assert len(schemas) == 1
    assert [r["v"] for r in read_all(source)] == ["", "", "", "7", "x"]


def test_a_value_that_does_not_fit_the_inferred_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 8)
    (tmp_path / "a.csv").write_text("n\n1\n2\n3\n4\n2.5\n")
    source = open_source(source_spec(str(tmp_path / "a.csv"), shard_bytes=8))
    with pytest.raises(InputError, match=r"a\.csv \(bytes 8-14\).*2\.5") as info:
        read_all(source)
    assert "inferred from the first 8 bytes of" in str(info.value)
    (tmp_path / "b.jsonl").write_text('{"n": 1}\n{"n": 2}\n{"n": 2.5}\n')
    with pytest.raises(InputError, match=r"b\.jsonl \(bytes 0-29\).*2\.5"):
        read_all(open_source(source_spec(str(tmp_path / "b.jsonl"))))


def test_jsonl_fields_missing_or_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 20)
    (tmp_path / "a.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2}\n{"a": 3, "b": "y", "c": true}\n')
    got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"))))
    assert got == [
        {"a": 1, "b": "x", SYNTHETIC_ID: "a.jsonl@0#0"},
        {"a": 2, "b": None, SYNTHETIC_ID: "a.jsonl@0#1"},
        {"a": 3, "b": "y", SYNTHETIC_ID: "a.jsonl@0#2"},
    ]


def test_malformed_jsonl_points_at_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n')
    with pytest.raises(InputError, match=r"a\.jsonl: bad JSON on the line at byte 18"):
        read_all(open_source(source_spec(str(tmp_path / "a.jsonl"), shard_bytes=10)))
    monkeypatch.setattr(text, "SAMPLE_BYTES", 8)
    with pytest.raises(InputError, match=r"a\.jsonl: bad JSON on the line at byte 18"):
        read_all(open_source(source_spec(str(tmp_path / "a.jsonl"), shard_bytes=10)))
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"b\.jsonl: the line at byte 9 is not a JSON object"):
        read_all(open_source(source_spec(str(tmp_path / "b.jsonl"))))


def test_malformed_csv_in_the_sample(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(InputError, match=r"first rows of .*a\.csv as csv: .*Expected 2 columns"):
        open_source(source_spec(str(tmp_path / "a.csv"))).plan()


def test_malformed_csv_names_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 4)
    (tmp_path / "a.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(InputError, match=r"a\.csv \(bytes 0-14\).*Expected 2 columns") as info:
        read_all(open_source(source_spec(str(tmp_path / "a.csv"))))
    assert "split_files" in str(info.value)


def test_later_file_missing_a_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    (tmp_path / "b.csv").write_text("a\n3\n")
    source = open_source(source_spec(str(tmp_path / "*.csv"), shard_bytes=1))
    with pytest.raises(InputError, match=r"b\.csv.*'b'"):
        read_all(source)


def test_columns_in_another_order_in_a_later_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a,b\n1,x\n")
    (tmp_path / "b.csv").write_text("b,a\ny,2\n")
    got = read_all(open_source(source_spec(str(tmp_path / "*.csv"), shard_bytes=1)))
    assert [(r["a"], r["b"]) for r in got] == [(1, "x"), (2, "y")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_memory_url(fmt: str) -> None:
    root = f"/infermill-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        fs.pipe(f"{root}/in/a.{fmt}", WRITERS[fmt](ROWS[:10]).encode())
        fs.pipe(f"{root}/in/b.{fmt}", WRITERS[fmt](ROWS[10:]).encode())
        source = open_source(source_spec(f"memory://{root}/in/*.{fmt}", shard_bytes=50))
        assert [(r["key"], r["name"]) for r in read_all(source, 3)] == ROWS
        assert source.plan()[0].fragments[0].path == f"memory://{root}/in/a.{fmt}"
    finally:
        fs.rm(root, recursive=True)
