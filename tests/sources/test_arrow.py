"""Arrow IPC input: the file format (Feather v2) and the stream format, sharded by record batches, and
end to end: arrow in -> parquet out and parquet in -> arrow out equal row for row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from infermill.errors import InputError
from infermill.sources import open_source
from infermill.sources.arrow import ArrowSource
from infermill.sources.base import Shard
from infermill.spec import JobSpec
from infermill.testing.sources import SourceConformance, source_spec
from tests.conftest import SCORER, expected_score, make_table, read_output, run_cli, write_job


def write_ipc(path: Path, table: pa.Table, batch_rows: int, *, stream: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = ipc.new_stream if stream else ipc.new_file
    with opener(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return path


def ranges(shards: list[Shard]) -> list[list[tuple[str, int, int, int, int | None]]]:
    return [[(f.relpath, f.start, f.stop, f.row_offset, f.rows) for f in s.fragments] for s in shards]


def read_all(source: ArrowSource, batch_size: int = 7) -> pa.Table:
    return pa.Table.from_batches([b for s in source.plan() for b in source.read(s, batch_size)])


class TestArrowFileConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        table = pa.Table.from_pylist(rows)
        per = -(-table.num_rows // 3) or 1
        for i in range(3):
            write_ipc(tmp_path / "data" / f"part-{i:03d}.arrow", table.slice(i * per, per), 4)
        return source_spec(str(tmp_path / "data"), format="arrow", shard_rows=6, **input_options)


class TestArrowStreamConformance(SourceConformance):
    shuffles_listing = True

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        table = pa.Table.from_pylist(rows)
        per = -(-table.num_rows // 3) or 1
        for i in range(3):
            write_ipc(tmp_path / "data" / f"part-{i:03d}.arrows", table.slice(i * per, per), 4, stream=True)
        return source_spec(str(tmp_path / "data"), format="arrow", shard_rows=6, **input_options)


@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_shards_are_runs_of_record_batches(tmp_path: Path, stream: bool) -> None:
    table = pa.table({"key": list(range(30))})
    write_ipc(tmp_path / "big.arrow", table, 3, stream=stream)
    source = ArrowSource(source_spec(str(tmp_path / "big.arrow"), shard_rows=7))
    shards = source.plan()
    assert ranges(shards) == [[("big.arrow", b, b + 2, b * 3, 6)] for b in range(0, 10, 2)]
    assert read_all(source).column("key").to_pylist() == list(range(30))


def test_stream_and_file_format_read_the_same_rows_and_ids(tmp_path: Path) -> None:
    table = make_table(1_000)
    write_ipc(tmp_path / "file" / "rows.arrow", table, 128)
    write_ipc(tmp_path / "stream" / "rows.arrow", table, 128, stream=True)
    read = {
        kind: read_all(ArrowSource(source_spec(str(tmp_path / kind / "rows.arrow"), shard_rows=300)), 100)
        for kind in ("file", "stream")
    }
    assert read["file"].equals(read["stream"])
    assert read["file"].drop_columns(["_row_id"]).equals(table)
    assert read["file"].column("_row_id").to_pylist()[:2] == ["rows.arrow#0", "rows.arrow#1"]


def test_feather_files_are_inferred_from_their_extension(tmp_path: Path) -> None:
    table = pa.table({"key": list(range(10)), "text": [f"t{i}" for i in range(10)]})
    feather.write_feather(table, str(tmp_path / "data.feather"), chunksize=4)
    source = open_source(source_spec(str(tmp_path / "data.feather")))
    assert isinstance(source, ArrowSource)
    assert [s.rows for s in source.plan()] == [10]
    assert read_all(source).select(["key", "text"]).equals(table)


def test_a_file_that_is_not_arrow_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.arrow").write_bytes(b"not an arrow file at all")
    with pytest.raises(InputError, match="not a readable Arrow IPC file"):
        ArrowSource(source_spec(str(tmp_path / "bad.arrow"))).plan()


JOB = """
name = "{name}"
[input]
path = "{input}"
format = "{in_fmt}"
id_column = "customer_id"
shard_rows = 600
[model]
kind = "python"
entrypoint = "scorer.py:Scorer"
features = ["f0", "f1", "f2"]
outputs = ["score"]
[output]
path = "out"
format = "{out_fmt}"
keep = ["segment"]
"""


@pytest.mark.parametrize(("in_fmt", "out_fmt"), [("arrow", "parquet"), ("parquet", "arrow")])
def test_arrow_in_parquet_out_and_back_equal_row_for_row(tmp_path: Path, in_fmt: str, out_fmt: str) -> None:
    table = make_table(2_000)
    if in_fmt == "arrow":
        write_ipc(tmp_path / "data" / "rows.arrow", table, 250)
        where = "data/rows.arrow"
    else:
        (tmp_path / "data").mkdir()
        pq.write_table(table, tmp_path / "data" / "rows.parquet", row_group_size=250)
        where = "data/rows.parquet"
    (tmp_path / "scorer.py").write_text(SCORER)
    job = write_job(tmp_path / "job.toml", JOB.format(name=f"{in_fmt}-{out_fmt}", input=where, in_fmt=in_fmt,
                                                     out_fmt=out_fmt))
    result = run_cli("run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / "out", out_fmt)
    assert out.num_rows == 2_000
    assert out.column("customer_id").to_pylist() == table.column("customer_id").to_pylist()
    assert out.column("segment").equals(table.column("segment"))
    assert out.column("score").to_pylist() == pytest.approx(list(expected_score(table)))
    if out_fmt == "arrow":
        assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == [
            f"part-{i:05d}-a1.arrow" for i in range(4)
        ]
        assert run_cli("verify", str(job)).returncode == 0
