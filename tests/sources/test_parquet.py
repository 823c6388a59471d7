"""Parquet: shards as runs of row groups, ids, schema drift between files, errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infermill.errors import InputError
from infermill.sources import open_source
from infermill.sources.base import SYNTHETIC_ID, Shard
from infermill.sources.parquet import ParquetSource
from infermill.testing.sources import source_spec
from tests.conftest import read_output, run_cli, write_job
from tests.sources.helpers import damage_page


def write(path: Path, keys: range, row_group_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": list(keys)}), path, row_group_size=row_group_size)


def ranges(shards: list[Shard]) -> list[list[tuple[str, int, int, int, int | None]]]:
    return [[(f.relpath, f.start, f.stop, f.row_offset, f.rows) for f in s.fragments] for s in shards]


def read_all(source: ParquetSource, batch_size: int = 100) -> list[dict[str, object]]:
    return [r for s in source.plan() for b in source.read(s, batch_size) for r in b.to_pylist()]


def test_small_files_merge_into_one_shard(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / f"f{i}.parquet", range(i * 3, i * 3 + 3), row_group_size=3)
    shards = ParquetSource(source_spec(str(tmp_path / "*.parquet"), shard_rows=10)).plan()
    assert ranges(shards) == [
        [("f0.parquet", 0, 1, 0, 3), ("f1.parquet", 0, 1, 0, 3), ("f2.parquet", 0, 1, 0, 3)],
        [("f3.parquet", 0, 1, 0, 3), ("f4.parquet", 0, 1, 0, 3)],
    ]
    assert [s.rows for s in shards] == [9, 6]


def test_a_file_splits_into_runs_of_row_groups(tmp_path: Path) -> None:
    write(tmp_path / "big.parquet", range(30), row_group_size=3)
    shards = ParquetSource(source_spec(str(tmp_path / "big.parquet"), shard_rows=7)).plan()
    assert ranges(shards) == [[("big.parquet", g, g + 2, g * 3, 6)] for g in range(0, 10, 2)]


def test_a_big_row_group_is_a_shard_of_its_own(tmp_path: Path) -> None:
    table = pa.table({"key": list(range(54))})
    with pq.ParquetWriter(tmp_path / "mixed.parquet", table.schema) as writer:
        for start, length in [(0, 2), (2, 50), (52, 2)]:
            writer.write_table(table.slice(start, length))
    source = ParquetSource(source_spec(str(tmp_path / "mixed.parquet"), shard_rows=10))
    shards = source.plan()
    assert ranges(shards) == [
        [("mixed.parquet", 0, 1, 0, 2)],
        [("mixed.parquet", 1, 2, 2, 50)],
        [("mixed.parquet", 2, 3, 52, 2)],
    ]
    assert [r["key"] for r in read_all(source, 7)] == list(range(54))


def test_synthetic_ids_are_the_row_index_in_the_file(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", range(5), row_group_size=2)
    write(tmp_path / "sub" / "b.parquet", range(5, 8), row_group_size=2)
    source = open_source(source_spec(str(tmp_path / "**" / "*.parquet"), shard_rows=3))
    assert [r[SYNTHETIC_ID] for r in read_all(source, 2)] == [
        "a.parquet#0",
        "a.parquet#1",
        "a.parquet#2",
        "a.parquet#3",
        "a.parquet#4",
        "sub/b.parquet#0",
        "sub/b.parquet#1",
        "sub/b.parquet#2",
    ]


def test_synthetic_ids_do_not_depend_on_the_shard_size(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", range(40), row_group_size=3)
    ids = [
        [
            r[SYNTHETIC_ID]
            for r in read_all(ParquetSource(source_spec(str(tmp_path), format="parquet", shard_rows=n)), 4)
        ]
        for n in (1, 5, 1000)
    ]
    assert ids[0] == ids[1] == ids[2]


def test_files_with_narrower_types_are_cast_to_the_first_files_schema(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}), tmp_path / "a.parquet")
    # Columns in another order, a narrower int and an extra column.
    pq.write_table(
        pa.table({"v": ["c"], "key": pa.array([3], pa.int32()), "extra": [0.5]}), tmp_path / "b.parquet"
    )
    source = ParquetSource(source_spec(str(tmp_path / "*.parquet"), shard_rows=10))
    (shard,) = source.plan()
    (batch,) = source.read(shard, 10)  # one batch across both files, in the first file's types
    expected = pa.schema([("key", pa.int64()), ("v", pa.string()), (SYNTHETIC_ID, pa.string())])
    assert batch.schema == expected
    batches = [batch]
    assert pa.Table.from_batches(batches).column("key").to_pylist() == [1, 2, 3]


def test_a_file_missing_a_column_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": [1], "v": ["a"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"key": [2]}), tmp_path / "b.parquet")
    source = ParquetSource(source_spec(str(tmp_path / "*.parquet"), shard_rows=1))
    shards = source.plan()
    with pytest.raises(InputError, match=r"column 'v' not found in .*b\.parquet; available columns: key"):
        list(source.read(shards[1], 10))


def test_unknown_column_names_the_column_the_file_and_the_columns(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", range(3), row_group_size=3)
    source = ParquetSource(source_spec(str(tmp_path / "a.parquet"), columns=["kee"]))
    with pytest.raises(InputError, match=r"column 'kee' not found in .*a\.parquet; available columns: key"):
        source.plan()


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"bad\.parquet is not a readable Parquet file"):
        ParquetSource(source_spec(str(tmp_path / "bad.parquet"))).plan()


def test_empty_files_give_no_shards(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    write(tmp_path / "full.parquet", range(3), row_group_size=3)
    source = ParquetSource(source_spec(str(tmp_path / "*.parquet")))
    assert ranges(source.plan()) == [[("full.parquet", 0, 1, 0, 3)]]
    assert source.schema().names == ["key"]


def test_memory_url() -> None:
    root = f"/infermill-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        with fs.open(f"{root}/data/a.parquet", "wb") as handle:
            pq.write_table(pa.table({"key": list(range(10))}), handle, row_group_size=4)
        source = open_source(source_spec(f"memory://{root}/data/*.parquet", shard_rows=4))
        shards = source.plan()
        assert len(shards) == 3 and shards[0].fragments[0].path == f"memory://{root}/data/a.parquet"
        assert [r["key"] for r in read_all(source, 3)] == list(range(10))
    finally:
        fs.rm(root, recursive=True)


def test_a_file_removed_after_planning(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", range(3), row_group_size=3)
    source = ParquetSource(source_spec(str(tmp_path / "a.parquet")))
    (shard,) = source.plan()
    (tmp_path / "a.parquet").unlink()
    with pytest.raises(InputError, match="input file not found"):
        list(source.read(shard, 10))


def write_checked(path: Path, table: pa.Table, **options: object) -> None:
    """Write ``table`` with page checksums, uncompressed and without dictionaries, so damaged bytes are
    plain values that would decode as numbers."""
    pq.write_table(table, path, write_page_checksum=True, compression="none", use_dictionary=False, **options)


def test_a_damaged_data_page_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    table = pa.table({"key": list(range(1000)), "x": [float(i) for i in range(1000)]})
    write_checked(tmp_path / "good.parquet", table)
    write_checked(tmp_path / "bad.parquet", table, row_group_size=500)
    damage_page(tmp_path / "bad.parquet", "x", row_group=1)
    source = ParquetSource(source_spec(str(tmp_path / "bad.parquet"), shard_rows=500))
    first, second = source.plan()  # the footer is intact: planning cannot tell
    assert [r["x"] for b in source.read(first, 100) for r in b.to_pylist()] == [float(i) for i in range(500)]
    with pytest.raises(InputError, match=r"bad\.parquet is damaged: row group 1 cannot be read .*CRC") as info:
        list(source.read(second, 100))
    assert "--restart" in str(info.value.hint)
    good = read_all(ParquetSource(source_spec(str(tmp_path / "good.parquet"))))
    assert [r["x"] for r in good] == table.column("x").to_pylist()  # checksums that hold read as before


def test_a_job_over_a_damaged_file_never_scores_its_garbage(job_dir: Path) -> None:
    rng = np.random.default_rng(0)
    table = pa.table(
        {"customer_id": np.arange(2000), **{f"f{i}": rng.normal(size=2000) for i in range(3)}, "segment": ["a"] * 2000}
    )
    (job_dir / "data").mkdir()
    write_checked(job_dir / "data" / "part-0.parquet", table.slice(0, 1000))
    write_checked(job_dir / "data" / "part-1.parquet", table.slice(1000))
    damage_page(job_dir / "data" / "part-1.parquet", "f1")
    job = write_job(
        job_dir / "job.toml",
        """
        [input]
        path = "data"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["f0", "f1", "f2"]
        outputs = ["score"]
        [output]
        path = "out"
        """,
    )
    result = run_cli("run", str(job), "--quiet", cwd=job_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "part-1.parquet is damaged" in result.stdout + result.stderr
    out = read_output(job_dir / "out")
    assert sorted(out.column("customer_id").to_pylist()) == list(range(1000))
    assert max(abs(v) for v in out.column("score").to_pylist()) < 100
