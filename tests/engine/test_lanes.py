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


# -- lanes never idle while work is queued ---------------------------------------------------------------

PROBE = '''
import threading
import time

from sklearn.linear_model import LogisticRegression

CALLS = []


class ThreadProbe(LogisticRegression):
    """A real classifier that notes which thread scored each call."""

    def predict_proba(self, X):
        CALLS.append((threading.current_thread().name, len(X)))
        time.sleep(0.05)  # a call that takes time, as a real model's does: the other lane is needed meanwhile
        return super().predict_proba(X)
'''


def _small_sklearn_job(directory: Path, parallel: str | None = None) -> tuple[Path, np.ndarray]:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 4))
    (directory / "data").mkdir()
    pq.write_table(pa.table({"id": np.arange(300), **{f"f{i}": x[:, i] for i in range(4)}}),
                   directory / "data" / "x.parquet")
    probe = __import__("lanes_probe")
    model = probe.ThreadProbe().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump(model, directory / "model.joblib")
    setting = f'parallel = "{parallel}"' if parallel else ""
    job = write_job(directory / "job.toml", f"""
        name = "small"
        [input]
        path = "data/"
        id_column = "id"
        [model]
        kind = "sklearn"
        path = "model.joblib"
        trusted = true
        {setting}
        [output]
        path = "out"
        [runtime]
        threads_per_worker = 2
        """)
    return job, x


def test_a_job_smaller_than_one_batch_keeps_both_lanes_busy_with_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lanes_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = __import__("lanes_probe")
    job, x = _small_sklearn_job(tmp_path / "lanes")
    probe.CALLS.clear()
    assert infermill.run(job, progress="off").rows_succeeded == 300
    # The whole input is one default batch: it is cut in two, one piece per lane, scored at once.
    threads = {name for name, _ in probe.CALLS}
    assert len(threads) == 2 and all(name.startswith("infermill-lane") for name in threads), probe.CALLS
    assert sorted(rows for _, rows in probe.CALLS) == [150, 150]
    with sqlite3.connect(tmp_path / "lanes" / ".infermill" / "small.sqlite") as db:
        (raw,) = db.execute("SELECT stats FROM shards").fetchone()
    stats = json.loads(raw)
    assert stats["lanes"] == 2 and stats["split_batches"] == 1 and stats["lane_busy_s"] > 0
    # The same results, in the same order, as one call per batch with the library's threads.
    one, _ = _small_sklearn_job(tmp_path / "library", parallel="library")
    assert infermill.run(one, progress="off").rows_succeeded == 300
    lanes, library = read_output(tmp_path / "lanes" / "out"), read_output(tmp_path / "library" / "out")
    assert lanes.column("id").to_pylist() == list(range(300))
    assert lanes.equals(library)
    model = joblib.load(tmp_path / "lanes" / "model.joblib")
    np.testing.assert_array_equal(lanes.column("score").to_numpy(), model.predict_proba(x)[:, 1])


def _split_job(directory: Path, *, sort_window: int | None, poison: tuple[int, ...]) -> Path:
    """300 texts, one default batch (the python kind's 8,192 rows): split for idle lanes."""
    directory.mkdir()
    texts = ["x" * (1 + (i * 37) % 200) for i in range(300)]
    for row in poison:
        texts[row] = "POISON" + texts[row]
    (directory / "data").mkdir()
    pq.write_table(pa.table({"id": np.arange(300), "text": texts}), directory / "data" / "t.parquet")
    (directory / "model.py").write_text(MODEL)
    window = f"[batch]\nsort_window = {sort_window}" if sort_window else ""
    return write_job(directory / "job.toml", f"""
        name = "split"
        [input]
        path = "data/"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "model.py:predict"
        features = ["text"]
        outputs = ["length", "lane"]
        {window}
        [output]
        path = "out"
        """)


@pytest.mark.parametrize("sort_window", [None, 200])
def test_a_batch_split_for_idle_lanes_keeps_order_ids_and_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sort_window: int | None
) -> None:
    poison = (17, 151, 299)  # in both pieces of the split batch, and its last row
    assert infermill.run(_split_job(tmp_path / "one", sort_window=sort_window, poison=poison), progress="off")
    monkeypatch.setattr(PythonModel, "lanes", lambda self: 2)
    two = _split_job(tmp_path / "two", sort_window=sort_window, poison=poison)
    result = infermill.run(two, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (297, 3)
    a, b = read_output(tmp_path / "one" / "out"), read_output(tmp_path / "two" / "out")
    assert b.column("id").to_pylist() == [i for i in range(300) if i not in poison]
    assert b.column("id").equals(a.column("id")) and b.column("length").equals(a.column("length"))
    assert len(set(b.column("lane").to_pylist())) == 2  # both lanes scored rows of the one batch
    assert _errors(tmp_path / "two") == _errors(tmp_path / "one") == [(17, 17), (151, 151), (299, 299)]
