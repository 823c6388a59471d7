"""Lanes: an adapter that scores several batches at once (``ModelAdapter.lanes() > 1``) writes exactly
what one lane writes: the same rows, in input order, with the same dead letters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

import infermill
from infermill.errors import InfermillError
from infermill.models.python import PythonModel
from tests.conftest import read_output, write_job

MODEL = '''
import threading
import time

import numpy as np
from infermill import InfermillError, ItemError


def predict(batch):
    texts = batch["text"]
    if any("FATAL" in t for t in texts):
        raise InfermillError("the model gave up")
    if any("POISON" in t for t in texts):
        raise ItemError("poisoned text")
    lengths = np.array([len(t) for t in texts])
    # Uneven call times, so lanes finish out of order.
    time.sleep(0.001 * (int(lengths[0]) % 7))
    return {"length": lengths, "lane": [threading.current_thread().name] * len(texts)}
'''

ROWS = 3_000
POISONED = (5, 1_234, 2_999)


def _job(directory: Path, *, sort_window: int | None = None, poison: tuple[int, ...] = (), fatal: int | None = None):
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    texts = ["x" * int(n) for n in rng.integers(1, 300, size=ROWS)]
    for row in poison:
        texts[row] = "POISON" + texts[row]
    if fatal is not None:
        texts[fatal] = "FATAL" + texts[fatal]
    (directory / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(ROWS), "text": texts}), directory / "data" / "t.parquet",
                   row_group_size=250)
    (directory / "model.py").write_text(MODEL)
    window = f"sort_window = {sort_window}" if sort_window else ""
    return write_job(directory / "job.toml", f"""
        name = "lanes"
        [input]
        path = "data/"
        id_column = "id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "model.py:predict"
        features = ["text"]
        outputs = ["length", "lane"]
        [batch]
        size = 50
        {window}
        [output]
        path = "out"
        """)


def _errors(directory: Path) -> list[tuple[int, int]]:
    files = sorted((directory / "out" / "_errors").glob("*.parquet"))
    if not files:
        return []
    table = pa.concat_tables([pq.read_table(p) for p in files])
    return sorted(zip(table.column("id").to_pylist(), table.column("_row").to_pylist(), strict=True))


@pytest.fixture
def three_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PythonModel, "lanes", lambda self: 3)


@pytest.mark.parametrize("sort_window", [None, 500])
def test_lanes_write_what_one_lane_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sort_window) -> None:
    one = _job(tmp_path / "one", sort_window=sort_window, poison=POISONED)
    first = infermill.run(one, progress="off")
    monkeypatch.setattr(PythonModel, "lanes", lambda self: 3)
    three = _job(tmp_path / "three", sort_window=sort_window, poison=POISONED)
    second = infermill.run(three, progress="off")
    assert (first.rows_succeeded, first.rows_failed) == (second.rows_succeeded, second.rows_failed) == (2_997, 3)
    a, b = read_output(tmp_path / "one" / "out"), read_output(tmp_path / "three" / "out")
    for path in sorted((tmp_path / "three" / "out").glob("part-*.parquet")):
        ids = pq.read_table(path).column("id").to_pylist()
        assert ids == sorted(ids)  # input order within each file
    assert b.column("id").equals(a.column("id"))
    assert b.column("length").equals(a.column("length"))
    assert _errors(tmp_path / "three") == _errors(tmp_path / "one") == [(5, 5), (1_234, 234), (2_999, 999)]
    lanes_used = set(b.column("lane").to_pylist())
    assert len(lanes_used) >= 2 and all(name.startswith("infermill-lane") for name in lanes_used)
    assert set(a.column("lane").to_pylist()) == {"infermill-worker"}
    with sqlite3.connect(tmp_path / "three" / ".infermill" / "lanes.sqlite") as db:
        stats = [json.loads(raw) for (raw,) in db.execute("SELECT stats FROM shards")]
    assert sum(s["batches"] for s in stats) >= ROWS // 50
    assert sum(s["bisections"] for s in stats) > 0


def test_a_fatal_error_on_a_lane_stops_the_run_and_keeps_committed_shards(tmp_path: Path, three_lanes) -> None:
    job = _job(tmp_path, fatal=2_500)
    with pytest.raises(InfermillError, match="the model gave up"):
        infermill.run(job, progress="off")
    assert infermill.status(job)["state"] == "failed"
    out = read_output(tmp_path / "out")
    assert out.column("id").to_pylist() == list(range(2_000))  # the first two shards, whole


def test_sklearn_lanes_equal_one_call_per_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 6))
    y = (x[:, 0] + np.sin(x[:, 1]) > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x[:5_000], y[:5_000])
    outputs = {}
    for mode in ("rows", "library"):
        directory = tmp_path / mode
        (directory / "data").mkdir(parents=True)
        table = pa.table({"id": np.arange(len(x)), **{f"f{i}": x[:, i] for i in range(6)}})
        pq.write_table(table, directory / "data" / "x.parquet", row_group_size=4_000)
        joblib.dump(model, directory / "model.joblib")
        job = write_job(directory / "job.toml", f"""
            name = "hgb"
            [input]
            path = "data/"
            id_column = "id"
            [model]
            kind = "sklearn"
            path = "model.joblib"
            trusted = true
            parallel = "{mode}"
            [batch]
            size = 4000
            [output]
            path = "out"
            [runtime]
            threads_per_worker = 2
            """)
        assert infermill.run(job, progress="off").rows_succeeded == len(x)
        outputs[mode] = read_output(directory / "out")
    assert outputs["rows"].column("id").to_pylist() == list(range(len(x)))
    assert outputs["rows"].equals(outputs["library"])
    np.testing.assert_allclose(outputs["rows"].column("score").to_numpy(), model.predict_proba(x)[:, 1])
