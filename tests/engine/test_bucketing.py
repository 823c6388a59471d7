"""Length bucketing (`[batch] sort_window`): batches of similar lengths, results in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import infermill
from tests.conftest import read_output, write_job

MODEL = '''
import itertools

import numpy as np
from infermill import ItemError

CALLS = itertools.count()


def predict(batch):
    texts = batch["text"]
    if any("POISON" in t for t in texts):
        raise ItemError("poisoned text")
    lengths = np.array([len(t) for t in texts])
    n = len(texts)
    return {
        "length": lengths,
        "call_rows": np.full(n, n),
        "call_spread": np.full(n, lengths.max() - lengths.min()),
        "call_no": np.full(n, next(CALLS)),
    }
'''


def _job(directory: Path, sort_window: int | None, poison: bool = False) -> tuple[Path, pa.Table]:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 500, size=3_000)
    texts = ["x" * int(n) for n in lengths]
    if poison:
        for row in (5, 1_234, 2_999):
            texts[row] = "POISON" + texts[row]
    table = pa.table({"id": np.arange(3_000), "text": texts})
    (directory / "data").mkdir(exist_ok=True)
    pq.write_table(table, directory / "data" / "texts.parquet", row_group_size=250)
    (directory / "model.py").write_text(MODEL)
    window = f"sort_window = {sort_window}" if sort_window else ""
    job = write_job(directory / "job.toml", f"""
        name = "texts"
        [input]
        path = "data/"
        id_column = "id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "model.py:predict"
        features = ["text"]
        outputs = ["length", "call_rows", "call_spread", "call_no"]
        [batch]
        size = 100
        {window}
        [output]
        path = "out"
        """)
    return job, table


def test_bucketing_reduces_padding_and_keeps_input_order(tmp_path: Path) -> None:
    plain_dir, bucket_dir = tmp_path / "plain", tmp_path / "bucketed"
    plain_dir.mkdir()
    bucket_dir.mkdir()
    plain_job, table = _job(plain_dir, None)
    bucket_job, _ = _job(bucket_dir, 1_000)
    infermill.run(plain_job, progress="off")
    infermill.run(bucket_job, progress="off")
    plain, bucketed = read_output(plain_dir / "out"), read_output(bucket_dir / "out")
    # Every file is in input order, and the results are the same.
    for path in sorted((bucket_dir / "out").glob("part-*.parquet")):
        ids = pq.read_table(path).column("id").to_pylist()
        assert ids == sorted(ids)
    assert bucketed.column("id").to_pylist() == list(range(3_000))
    assert bucketed.column("length").equals(plain.column("length"))
    assert bucketed.column("length").to_pylist() == [len(t) for t in table.column("text").to_pylist()]
    # Calls hold rows of similar length: 10 batches per 1,000-row window cut the spread about tenfold.
    spread_plain = float(np.mean(plain.column("call_spread").to_numpy()))
    spread_bucketed = float(np.mean(bucketed.column("call_spread").to_numpy()))
    assert spread_bucketed < spread_plain / 5, (spread_plain, spread_bucketed)
    assert set(bucketed.column("call_rows").to_pylist()) == {100}


def test_bucketing_sends_the_longest_rows_first(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, 1_000)
    infermill.run(job, progress="off")
    out = read_output(tmp_path / "out")
    length, call = out.column("length").to_numpy(), out.column("call_no").to_numpy()
    for window in range(3):  # shards of 1,000 rows, one window each
        rows = slice(window * 1_000, (window + 1) * 1_000)
        calls = np.unique(call[rows])
        assert len(calls) == 10
        shortest = [length[rows][call[rows] == c].min() for c in calls]
        longest = [length[rows][call[rows] == c].max() for c in calls]
        # Call by call, every row is at least as long as any row of the next call.
        assert all(s >= nxt for s, nxt in zip(shortest[:-1], longest[1:], strict=True)), (shortest, longest)
        assert longest[0] == length[rows].max()


def test_bucketing_dead_letters_keep_their_positions(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, 1_000, poison=True)
    result = infermill.run(job, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (2_997, 3)
    errors = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out" / "_errors").glob("*.parquet"))])
    assert sorted(zip(errors.column("id").to_pylist(), errors.column("_row").to_pylist(), strict=True)) == [
        (5, 5), (1_234, 234), (2_999, 999),
    ]
    out = read_output(tmp_path / "out")
    assert out.column("id").to_pylist() == [i for i in range(3_000) if i not in (5, 1_234, 2_999)]
    # retry with nothing fixed keeps everything where it is
    again = infermill.retry(job)
    assert (again.rows_succeeded, again.rows_failed) == (2_997, 3)
