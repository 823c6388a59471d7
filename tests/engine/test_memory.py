"""Arrow allocates from jemalloc while workers run, and the pool goes back afterwards."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infermill.engine import memory
from infermill.engine.memory import reusing_arrow_memory
from infermill.engine.runner import run
from tests.conftest import read_output, write_job

try:
    pa.jemalloc_memory_pool()
    HAS_JEMALLOC = True
except NotImplementedError:
    HAS_JEMALLOC = False

needs_jemalloc = pytest.mark.skipif(not HAS_JEMALLOC, reason="this pyarrow build has no jemalloc")


@pytest.fixture(autouse=True)
def _mimalloc_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts from Arrow's own default (mimalloc) and no user choice in the environment."""
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    yield
    pa.set_memory_pool(before)
    assert memory._holders == 0


def backend() -> str:
    return str(pa.default_memory_pool().backend_name)


@needs_jemalloc
def test_jemalloc_inside_and_the_previous_pool_after() -> None:
    with reusing_arrow_memory():
        assert backend() == "jemalloc"
        pa.array(range(100_000))  # allocate and free inside
    assert backend() == "mimalloc"


@needs_jemalloc
def test_several_workers_share_one_switch_and_the_last_one_out_restores() -> None:
    inside = threading.Event()
    release = threading.Event()
    seen: list[str] = []

    def worker() -> None:
        with reusing_arrow_memory():
            inside.set()
            release.wait(10)
            seen.append(backend())

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(10)
    with reusing_arrow_memory(), reusing_arrow_memory():  # re-entrant
        assert backend() == "jemalloc"
    assert backend() == "jemalloc", "the other worker still runs"
    release.set()
    thread.join(10)
    assert seen == ["jemalloc"]
    assert backend() == "mimalloc"


def test_a_pool_the_user_chose_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    pa.set_memory_pool(pa.system_memory_pool())
    with reusing_arrow_memory():
        assert backend() == "system"
    assert backend() == "system"
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    with reusing_arrow_memory():
        assert backend() == "mimalloc"


def test_the_pool_is_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), reusing_arrow_memory():
        raise RuntimeError("boom")
    assert backend() == "mimalloc"


@needs_jemalloc
def test_a_run_reads_with_jemalloc_and_restores_the_pool(tmp_path: Path) -> None:
    """End to end, in library mode (workers = 1 runs in this process): the model sees jemalloc."""
    pq.write_table(pa.table({"id": list(range(50)), "x": [float(i) for i in range(50)]}), tmp_path / "in.parquet")
    (tmp_path / "pools.py").write_text(
        "import pyarrow as pa\n"
        "class Model:\n"
        "    def predict(self, batch):\n"
        "        return {'pool': [pa.default_memory_pool().backend_name] * len(batch['x'])}\n"
    )
    job = write_job(
        tmp_path / "job.toml",
        """
        [input]
        path = "in.parquet"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "pools.py:Model"
        features = ["x"]
        outputs = ["pool"]
        [batch]
        size = 16
        [output]
        path = "out"
        format = "parquet"
        """,
    )
    result = run(job, progress="off")
    assert result.state == "complete"
    table = read_output(tmp_path / "out")
    assert table.num_rows == 50
    assert set(table.column("pool").to_pylist()) == {"jemalloc"}
    assert backend() == "mimalloc"
