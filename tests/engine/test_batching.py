"""[batch] max_bytes / max_tokens: the budget cut, row sizes, the scorer's calls and a whole run."""

from __future__ import annotations

import doctest
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import infermill
from infermill.engine import batching
from infermill.engine.batching import budget_slices, row_bytes
from infermill.engine.columns import Columns
from infermill.engine.scoring import BatchScorer
from infermill.errors import ItemError, SpecError
from infermill.models.base import ModelAdapter
from infermill.spec import JobSpec, RetrySpec
from infermill.testing.models import make_python_spec
from tests.conftest import read_output, write_job


# -- the cut -----------------------------------------------------------------------------------------
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=100), max_size=200),
    max_rows=st.integers(min_value=1, max_value=50),
    budget=st.integers(min_value=1, max_value=300),
)
def test_slices_cover_every_row_once_in_order_within_budget(sizes: list[int], max_rows: int, budget: int) -> None:
    array = np.array(sizes, dtype=np.int64)
    slices = budget_slices(array, max_rows, budget)
    assert [i for start, end in slices for i in range(start, end)] == list(range(len(sizes)))
    for start, end in slices:
        assert 1 <= end - start <= max_rows
        assert end - start == 1 or array[start:end].sum() <= budget
        # Greedy: the next row would have broken the budget or the row cap.
        if end < len(sizes):
            assert end - start == max_rows or array[start : end + 1].sum() > budget


def test_module_example() -> None:
    assert doctest.testmod(batching, extraglobs={"np": np}).failed == 0


def test_row_bytes() -> None:
    batch = pa.record_batch(
        {
            "text": pa.array(["ab", None, "héllo"]),
            "x": pa.array([1.0, 2.0, 3.0]),
            "cat": pa.array(["a", "bb", "a"]).dictionary_encode(),
            "ids": pa.array([[1, 2], [], None], pa.list_(pa.int32())),
            "vec": pa.array([[1.0, 2.0]] * 3, pa.list_(pa.float32(), 2)),
            "blob": pa.array([b"\x00" * 7, b"", b"x"], pa.large_binary()),
        }
    )
    # text (nulls 0, utf-8 bytes) + float64 + decoded category + int32 list + float32 x 2 + binary
    assert row_bytes(batch).tolist() == [2 + 8 + 1 + 8 + 8 + 7, 0 + 8 + 2 + 0 + 8 + 0, 6 + 8 + 1 + 0 + 8 + 1]


# -- the scorer --------------------------------------------------------------------------------------
class Recorder(ModelAdapter):
    """Scores ``id * 2``; records each call's ids; refuses ``bad`` ids; OOMs on calls over ``oom_rows``."""

    kind = "python"

    def __init__(self, spec: JobSpec, *, bad: set[int] = frozenset(), oom_rows: int | None = None,
                 tokens: bool = False) -> None:
        super().__init__(spec)
        self.calls: list[list[int]] = []
        self.bad = bad
        self.oom_rows = oom_rows
        self.tokens = tokens

    def token_counts(self, features: pa.RecordBatch) -> np.ndarray | None:
        if not self.tokens:
            return None
        return np.array([len(t.split()) for t in features.column("text").to_pylist()])

    def predict(self, inputs: Any) -> Any:
        ids = inputs.column("id").to_pylist()
        if self.oom_rows is not None and len(ids) > self.oom_rows:
            raise MemoryError("too big")
        if self.bad & set(ids):
            raise ItemError("bad id")
        self.calls.append(ids)
        return np.array(ids) * 2

    def fingerprint(self) -> str:
        return "recorder"


def _texts(n: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    words = [" ".join(["w" * int(rng.integers(1, 6))] * int(rng.integers(1, 12))) for _ in range(n)]
    return pa.record_batch({"id": pa.array(range(n), pa.int64()), "text": pa.array(words)})


COLUMNS = Columns(id="id", features=["id", "text"], keep=[], read=["id", "text"])


def _score(adapter: Recorder, batch: pa.RecordBatch, size: int, **budget: Any) -> tuple[pa.Table, list[int]]:
    scorer = BatchScorer(adapter, COLUMNS, RetrySpec(max_attempts=1), size, wait=lambda _: False, **budget)
    tables, dead = scorer.score(batch)
    return pa.concat_tables(tables), [d.row for d in dead]


def test_scorer_calls_respect_max_bytes_and_keep_order_and_dead_rows(tmp_path: Path) -> None:
    batch = _texts(300)
    sizes = row_bytes(batch)
    spec = make_python_spec(tmp_path)
    plain, plain_dead = _score(Recorder(spec, bad={7, 150}), batch, 64)
    adapter = Recorder(spec, bad={7, 150})
    table, dead = _score(adapter, batch, 64, max_bytes=120)
    assert table.equals(plain)
    assert dead == plain_dead == [7, 150]
    assert max(len(c) for c in adapter.calls) < 64
    for call in adapter.calls:
        assert len(call) == 1 or sizes[call].sum() <= 120


def test_scorer_single_row_over_budget_goes_alone(tmp_path: Path) -> None:
    batch = _texts(20)
    adapter = Recorder(make_python_spec(tmp_path))
    table, _ = _score(adapter, batch, 8, max_bytes=1)
    assert [len(c) for c in adapter.calls] == [1] * 20
    assert table.column("id").to_pylist() == list(range(20))


def test_scorer_max_tokens_uses_the_adapter_or_four_bytes_a_token(tmp_path: Path) -> None:
    batch = _texts(200, seed=3)
    spec = make_python_spec(tmp_path)
    counted = Recorder(spec, tokens=True)
    _score(counted, batch, 100, max_tokens=20)
    words = np.array([len(t.split()) for t in batch.column("text").to_pylist()])
    assert all(len(c) == 1 or words[c].sum() <= 20 for c in counted.calls)
    fallback = Recorder(spec)
    _score(fallback, batch, 100, max_tokens=20)
    approx = -(-row_bytes(batch) // 4)
    assert all(len(c) == 1 or approx[c].sum() <= 20 for c in fallback.calls)
    assert [len(c) for c in counted.calls] != [len(c) for c in fallback.calls]


def test_scorer_budget_and_oom_split_together(tmp_path: Path) -> None:
    batch = _texts(200, seed=1)
    sizes = row_bytes(batch)
    adapter = Recorder(make_python_spec(tmp_path), oom_rows=5)
    table, dead = _score(adapter, batch, 64, max_bytes=200)
    assert dead == []
    assert table.column("id").to_pylist() == list(range(200))
    assert all(len(c) <= 5 and (len(c) == 1 or sizes[c].sum() <= 200) for c in adapter.calls)


# -- the spec ----------------------------------------------------------------------------------------
def test_budget_keys_are_checked_and_unset_ones_keep_the_fingerprint(tmp_path: Path) -> None:
    base = {"input": {"path": "x.parquet"}, "model": {"kind": "python", "entrypoint": "m.py:M"},
            "output": {"path": "out"}}
    plain = JobSpec.from_dict(base, base_dir=tmp_path)
    assert plain.batch.max_bytes is None and plain.batch.max_tokens is None
    with_budget = JobSpec.from_dict({**base, "batch": {"max_bytes": 4096}}, base_dir=tmp_path)
    assert with_budget.fingerprint() != plain.fingerprint()
    with pytest.raises(SpecError, match="'batch.max_tokens' must be at least 1, not 0"):
        JobSpec.from_dict({**base, "batch": {"max_tokens": 0}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="'batch.max_bytes' must be int"):
        JobSpec.from_dict({**base, "batch": {"max_bytes": "1k"}}, base_dir=tmp_path)


# -- a whole run -------------------------------------------------------------------------------------
CALL_RECORDER = '''
import numpy as np

class Model:
    """Echoes the id, and writes each call's row count and text bytes next to every row of the call."""

    def predict(self, batch):
        n = len(batch["id"])
        nbytes = sum(len(t.encode()) for t in batch["text"]) + 8 * n
        return {"echo": batch["id"] * 2, "call_rows": np.full(n, n), "call_bytes": np.full(n, nbytes)}
'''


def _text_job(tmp_path: Path, extra: str) -> Path:
    rng = np.random.default_rng(7)
    n = 3_000
    texts = ["x" * int(k) for k in rng.integers(0, 400, size=n)]
    (tmp_path / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(n), "text": texts}), tmp_path / "data" / "texts.parquet",
                   row_group_size=1_000)
    (tmp_path / "model.py").write_text(CALL_RECORDER)
    return write_job(
        tmp_path / "job.toml",
        f"""
        name = "texts"
        [input]
        path = "data/texts.parquet"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "model.py:Model"
        features = ["id", "text"]
        outputs = ["echo", "call_rows", "call_bytes"]
        [batch]
        size = 256
        {extra}
        [output]
        path = "out"
        """,
    )


def test_run_with_max_bytes_respects_the_budget_and_matches_a_plain_run(tmp_path: Path) -> None:
    plain_dir, budget_dir = tmp_path / "plain", tmp_path / "budget"
    plain_dir.mkdir()
    budget_dir.mkdir()
    infermill.run(_text_job(plain_dir, ""), progress="off")
    result = infermill.run(_text_job(budget_dir, "max_bytes = 8000"), progress="off")
    assert result.state == "complete"
    plain = read_output(plain_dir / "out").sort_by("id")
    budget = read_output(budget_dir / "out")
    assert budget.column("id").to_pylist() == plain.column("id").to_pylist()  # input order kept
    assert budget.column("echo").equals(plain.column("echo"))
    rows, nbytes = budget.column("call_rows").to_numpy(), budget.column("call_bytes").to_numpy()
    assert ((nbytes <= 8000) | (rows == 1)).all()
    assert rows.max() < 256 and set(plain.column("call_rows").to_pylist()) == {256, 3_000 % 256}
    stats = [json.loads(s) for (s,) in sqlite3.connect(budget_dir / ".infermill" / "texts.sqlite").execute(
        "SELECT stats FROM shards")]
    assert sum(s["calls"] for s in stats) > 3_000 // 256
