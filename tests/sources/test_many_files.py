"""A folder of many small files (the shape of Spark and streaming outputs): full batches, work linear in files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

import infermill
from infermill.sources import _files as files_module
from infermill.sources._fs import InputListing, _walk_local, list_input
from infermill.sources.base import SYNTHETIC_ID, Fragment, Shard, rebatch
from infermill.sources.parquet import ParquetSource
from infermill.spec import JobSpec
from infermill.testing.sources import source_spec
from tests.conftest import read_output, write_job


def small_files(folder: Path, files: int, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        keys = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
        pq.write_table(pa.table({"key": keys, "x": keys.astype(np.float64)}), folder / f"part-{i:05d}.parquet")


def _pieces(sizes: list[int]) -> Iterator[pa.RecordBatch]:
    start = 0
    for size in sizes:
        yield pa.record_batch({"v": pa.array(range(start, start + size), pa.int64())})
        start += size


def test_rebatch_makes_full_batches_of_many_small_pieces() -> None:
    out = list(rebatch(_pieces([7] * 300), 64))
    assert [b.num_rows for b in out] == [64] * 32 + [2100 - 64 * 32]
    assert pa.Table.from_batches(out).column("v").to_pylist() == list(range(2100))


def test_rebatch_copies_at_most_one_batch_per_boundary() -> None:
    # A short piece (a file's last rows) then a large batch: the first output batch joins the two; every
    # later one is a slice of the large batch, not a copy of it.
    short, large = pa.record_batch({"v": pa.array([0, 1, 2], pa.int64())}), pa.record_batch(
        {"v": pa.array(range(3, 1003), pa.int64())}
    )
    out = list(rebatch(iter([short, large]), 10))
    assert [b.num_rows for b in out] == [10] * 100 + [3]
    assert pa.Table.from_batches(out).column("v").to_pylist() == list(range(1003))
    data = large.column(0).buffers()[1]
    starts = [b.column(0).buffers()[1].address for b in out[1:-1]]
    assert all(data.address <= start < data.address + data.size for start in starts)


def test_a_shard_of_many_small_files_is_read_as_full_batches(tmp_path: Path) -> None:
    small_files(tmp_path / "data", files=600, rows=5)
    source = ParquetSource(source_spec(str(tmp_path / "data"), format="parquet", shard_rows=100_000))
    (shard,) = source.plan()
    assert len(shard.fragments) == 600
    batches = list(source.read(shard, 128))
    assert [b.num_rows for b in batches] == [128] * 23 + [3000 - 128 * 23]
    table = pa.Table.from_batches(batches)
    assert table.column("key").to_pylist() == list(range(3000))
    # Synthetic ids still name each row's own file and its index there, across batch boundaries.
    ids = table.column(SYNTHETIC_ID).to_pylist()
    assert ids[127:130] == ["part-00025.parquet#2", "part-00025.parquet#3", "part-00025.parquet#4"]
    assert ids[-1] == "part-00599.parquet#4"


MODEL = """
import numpy as np


def predict(batch):
    n = len(batch["x"])
    return {"score": batch["x"], "call_rows": np.full(n, n)}
"""


def test_the_model_gets_full_batches_from_a_folder_of_small_files(tmp_path: Path) -> None:
    small_files(tmp_path / "data", files=300, rows=10)
    (tmp_path / "model.py").write_text(MODEL)
    job = write_job(tmp_path / "job.toml", """
        name = "small-files"
        [input]
        path = "data/"
        id_column = "key"
        [model]
        kind = "python"
        entrypoint = "model.py:predict"
        features = ["x"]
        outputs = ["score", "call_rows"]
        [batch]
        size = 256
        [output]
        path = "out"
        """)
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == 3000
    out = read_output(tmp_path / "out")
    assert sorted(out.column("key").to_pylist()) == list(range(3000))
    calls = out.column("call_rows").to_numpy()
    # Every row was scored in a full batch of 256 but the last 184 (3000 = 11 x 256 + 184).
    assert int((calls == 256).sum()) == 11 * 256
    assert int((calls == 184).sum()) == 184


def test_shard_ids_do_not_change() -> None:
    # Ledgers of jobs already run hold these ids: a faster way to describe fragments must give the same.
    fragment = Fragment("/data/a.parquet", "a.parquet", 1, 2, 3, 4, "10:1.5")
    assert Shard(ordinal=3, fragments=(fragment,)).shard_id == "00003-46aafd96d75d"
    assert Shard.from_json(Shard(ordinal=3, fragments=(fragment,)).to_json()).fragments == (fragment,)


def test_the_listing_describes_files_as_fsspec_does(tmp_path: Path) -> None:
    # Fingerprints come from the listing's info: it is built from the walk's own stat, and must agree
    # with what fsspec's info says of the same files (else every job planned before would "change").
    small_files(tmp_path / "data", files=3, rows=2)
    fs = LocalFileSystem()
    found = _walk_local(fs, str(tmp_path / "data"))
    assert len(found) == 3
    for path, info in found.items():
        expected = fs.info(path)
        assert {k: v for k, v in info.items() if k in expected} == expected
        assert os.path.basename(path).startswith("part-")


def test_a_run_lists_the_input_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker takes the planned schema rather than listing the whole folder again to find its first file.
    small_files(tmp_path / "data", files=20, rows=5)
    (tmp_path / "model.py").write_text(MODEL)
    job = write_job(tmp_path / "job.toml", """
        [input]
        path = "data/"
        id_column = "key"
        [model]
        kind = "python"
        entrypoint = "model.py:predict"
        features = ["x"]
        outputs = ["score", "call_rows"]
        [output]
        path = "out"
        """)
    listed: list[str] = []

    def counting(spec: JobSpec, fmt: str) -> InputListing:
        listed.append(fmt)
        return list_input(spec, fmt)

    monkeypatch.setattr(files_module, "list_input", counting)
    assert infermill.run(job, progress="off").rows_succeeded == 100
    assert listed == ["parquet"]
