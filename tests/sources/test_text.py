"""CSV and JSONL: byte-range shards at any size, line endings, delimiters, types, URLs and errors."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import sys
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
from infermill.sources.base import INPUT_ERROR, SYNTHETIC_ID, Source
from infermill.sources.text import SAMPLE_BYTES
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


def test_bad_rows_among_quoted_line_breaks(tmp_path: Path) -> None:
    long = "z\n" * 600
    (tmp_path / "q.csv").write_text(
        f'key,note\n1,"two\nlines"\n2,x,y\n3,"a ""q""\nb"\n4,"{long}"\n5,"\nlast"\n'
    )
    source = open_source(source_spec(str(tmp_path / "q.csv"), split_files=False, max_row_bytes=1000))
    got = read_all(source)
    assert [(r["key"], r["note"]) for r in got] == [
        (1, "two\nlines"), (None, None), (3, 'a "q"\nb'), (None, None), (5, "\nlast")
    ]
    errors = errors_of(got)
    assert "Expected 2 columns, got 3" in errors[1] and "split_files" not in errors[1]
    assert "longer than 1,000 bytes" in errors[3]


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


def errors_of(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Row index -> message, for the rows read as unreadable (``_input_error``)."""
    return {i: r[INPUT_ERROR]["message"] for i, r in enumerate(rows) if r.get(INPUT_ERROR)}


def test_a_value_that_does_not_fit_the_inferred_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 8)
    (tmp_path / "a.csv").write_text("n\n1\n2\n3\n4\n2.5\n5\n")
    got = read_all(open_source(source_spec(str(tmp_path / "a.csv"), shard_bytes=8)))
    assert [r["n"] for r in got] == [1, 2, 3, 4, None, 5]
    errors = errors_of(got)
    assert list(errors) == [4]
    assert re.search(r"a\.csv: the row at byte 10: column 'n' holds '2\.5', which does not fit its type int64 "
                     r"\(inferred from the first rows of .*a\.csv\)", errors[4])
    assert got[4][SYNTHETIC_ID] == "a.csv@8#1" and got[5][SYNTHETIC_ID] == "a.csv@8#2"
    (tmp_path / "b.jsonl").write_text('{"n": 1}\n{"n": 2}\n{"n": "x"}\n{"n": 4}\n')
    got = read_all(open_source(source_spec(str(tmp_path / "b.jsonl"))))
    assert [r["n"] for r in got] == [1, 2, None, 4]
    assert re.search(r"b\.jsonl: the row at byte 18: field 'n' holds \"x\", which does not fit its type int64",
                     errors_of(got)[2])


def test_malformed_jsonl_is_a_row_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n')
    for sample in (SAMPLE_BYTES, 8):
        monkeypatch.setattr(text, "SAMPLE_BYTES", sample)
        for shard_bytes in (10, 1000):
            got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"), shard_bytes=shard_bytes)))
            assert [r["a"] for r in got] == [1, 2, None, 4]
            assert re.search(r"a\.jsonl: the row at byte 18: bad JSON", errors_of(got)[2])
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    got = read_all(open_source(source_spec(str(tmp_path / "b.jsonl"))))
    assert "b.jsonl: the row at byte 9: the line is not a JSON object" in errors_of(got)[1]


def test_malformed_csv_row_is_a_row_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")
    for sample in (SAMPLE_BYTES, 4):
        monkeypatch.setattr(text, "SAMPLE_BYTES", sample)
        got = read_all(open_source(source_spec(str(tmp_path / "a.csv"))))
        assert [r["a"] for r in got] == [1, None, 6]
        message = errors_of(got)[1]
        assert "a.csv: the row at byte 8:" in message and "Expected 2 columns" in message
        assert "split_files = false" in message


def test_invalid_utf8_is_a_row_error_never_data(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"k,name\n1,ok\n2,caf\xe9\n3,fine\n")
    got = read_all(open_source(source_spec(str(tmp_path / "a.csv"))))
    assert [r["name"] for r in got] == ["ok", None, "fine"]
    assert "a.csv: the row at byte 12: bytes that are not valid utf-8" in errors_of(got)[1]
    (tmp_path / "b.jsonl").write_bytes(b'{"k": 1, "name": "ok"}\n{"k": 2, "name": "caf\xe9"}\n{"k": 3, "name": "x"}\n')
    got = read_all(open_source(source_spec(str(tmp_path / "b.jsonl"))))
    assert [r["name"] for r in got] == ["ok", None, "x"]
    assert "not valid utf-8" in errors_of(got)[1]


def test_bad_values_of_other_types_are_found_by_halves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Types the row checks leave to pyarrow (lists, booleans): the rows at fault are still found."""
    monkeypatch.setattr(text, "SAMPLE_BYTES", 30)
    lines = [json.dumps({"tags": [i, i + 1]}) for i in range(40)]
    lines[25] = json.dumps({"tags": "x"})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"))))
    assert list(errors_of(got)) == [25] and len(got) == 40
    assert got[26]["tags"] == [26, 27]
    rows = ["flag", *(["true", "false"] * 20)]
    rows[30] = "maybe"
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    got = read_all(open_source(source_spec(str(tmp_path / "b.csv"))))
    assert list(errors_of(got)) == [29] and "maybe" in errors_of(got)[29]
    assert [r["flag"] for r in got[28:31]] == [True, None, True]


def test_encoding(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("k,café\n1,crème\n".encode("latin-1"))
    with pytest.raises(InputError, match="header line of .*a.csv is not valid utf-8") as info:
        open_source(source_spec(str(tmp_path / "a.csv"))).schema()
    assert 'encoding = "latin-1"' in (info.value.hint or "")
    got = read_all(open_source(source_spec(str(tmp_path / "a.csv"), encoding="latin-1")))
    assert got == [{"k": 1, "café": "crème", SYNTHETIC_ID: "a.csv@0#0"}]
    (tmp_path / "b.jsonl").write_bytes('{"k": "crème"}\n'.encode("cp1252"))
    got = read_all(open_source(source_spec(str(tmp_path / "b.jsonl"), encoding="cp1252")))
    assert [r["k"] for r in got] == ["crème"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_over_max_row_bytes(tmp_path: Path, fmt: str) -> None:
    rows = [(1, "a"), (2, "b" * 5000), (3, "c")]
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(WRITERS[fmt](rows).encode())
    for shard_bytes in (7, 100, 10_000):
        got = read_all(open_source(source_spec(str(path), max_row_bytes=1000, shard_bytes=shard_bytes)))
        assert [r["key"] for r in got] == [1, None, 3]
        assert "longer than 1,000 bytes ([input] max_row_bytes)" in errors_of(got)[1]


def test_an_id_column_is_kept_for_a_bad_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 10)
    (tmp_path / "a.jsonl").write_text('{"id": 7, "n": 1}\n{"id": 8, "n": "x"}\n{"id": 9, "n": \n')
    got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"), id_column="id")))
    assert [r["id"] for r in got] == [7, 8, None]
    assert got[2][INPUT_ERROR]["item"] == "a.jsonl@38"
    (tmp_path / "b.csv").write_text("id,n\n7,1\n8,x,y\n")
    got = read_all(open_source(source_spec(str(tmp_path / "b.csv"), id_column="id")))
    assert [r["id"] for r in got] == [7, 8]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_compressed_input(tmp_path: Path, fmt: str, suffix: str) -> None:
    if suffix == ".zst":
        zstandard = pytest.importorskip("zstandard")
        compress: Any = zstandard.ZstdCompressor().compress
    else:
        compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix]
    (tmp_path / f"a.{fmt}{suffix}").write_bytes(compress(WRITERS[fmt](ROWS[:12]).encode()))
    (tmp_path / f"b.{fmt}").write_bytes(WRITERS[fmt](ROWS[12:]).encode())
    (tmp_path / f"c.{fmt}.bak").write_bytes(b"not input")
    source = open_source(source_spec(str(tmp_path), shard_bytes=20))
    shards = source.plan()
    assert [f.relpath for f in shards[0].fragments] == [f"a.{fmt}{suffix}"]  # never cut
    assert [(r["key"], r["name"]) for r in read_all(source, 5)] == ROWS


def test_zst_without_zstandard_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    (tmp_path / "a.csv.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(InputError, match="zstandard") as info:
        open_source(source_spec(str(tmp_path / "a.csv.zst"))).schema()
    assert "infermill[zstd]" in (info.value.hint or "")


def test_decompression_bomb_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb") as out:
        out.write(b'{"k": 1}\n')
        for _ in range(64):
            out.write(bytes(1 << 20))
    source = open_source(source_spec(str(path), max_decompressed_bytes=8 << 20))
    with pytest.raises(InputError, match=r"bomb\.jsonl\.gz expands to more than 8,388,608 bytes") as info:
        read_all(source)
    assert "max_decompressed_bytes" in (info.value.hint or "")
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8b\x08 this is no gzip stream")
    with pytest.raises(InputError, match="cannot decompress .*bad.csv.gz"):
        open_source(source_spec(str(tmp_path / "bad.csv.gz"))).schema()


def test_jsonl_fields_missing_or_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "SAMPLE_BYTES", 20)
    (tmp_path / "a.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2}\n{"a": 3, "b": "y", "c": true}\n')
    got = read_all(open_source(source_spec(str(tmp_path / "a.jsonl"))))
    assert got == [
        {"a": 1, "b": "x", SYNTHETIC_ID: "a.jsonl@0#0"},
        {"a": 2, "b": None, SYNTHETIC_ID: "a.jsonl@0#1"},
        {"a": 3, "b": "y", SYNTHETIC_ID: "a.jsonl@0#2"},
    ]


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
