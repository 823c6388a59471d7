"""Crash safety: a real `infermill run` subprocess is SIGKILLed at random moments and at every commit step,
resumed each time, and its final output must equal an uninterrupted run's: every id once, same scores.
Each test runs with the SQLite ledger and with a PostgreSQL one (``ledger_url``)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infermill.engine.faults import POINTS
from tests.conftest import SCORER, read_output, write_job, write_parquet_files
from tests.postgres import ledger_line

pytestmark = pytest.mark.slow

SLOW_SCORER = SCORER.replace("import numpy as np", "import time\nimport numpy as np").replace(
    "    def predict(self, batch):\n", "    def predict(self, batch):\n        time.sleep(0.01)\n"
)
ROWS = 60_000


def _job(directory: Path, ledger: str | None = None) -> Path:
    write_parquet_files(directory / "data", ROWS, files=6, row_group_size=1_000)
    (directory / "scorer.py").write_text(SLOW_SCORER)
    return write_job(
        directory / "job.toml",
        """
        name = "crash"
        [input]
        path = "data/"
        id_column = "customer_id"
        shard_rows = 3000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["f0", "f1", "f2"]
        outputs = ["score"]
        [batch]
        size = 500
        [output]
        path = "out"
        keep = ["segment"]
        [runtime]
        """ + ledger_line(ledger) + "\n",
    )


def _start(job: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermill", "run", str(job), "--quiet", *(args or [])],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _assert_no_duplicates(out_dir: Path) -> None:
    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return
    import pyarrow.parquet as pq

    ids = pa.concat_arrays([pq.read_table(p, columns=["customer_id"]).column(0).combine_chunks() for p in parts])
    assert len(pc.unique(ids)) == len(ids), "duplicate ids in committed output"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    directory = tmp_path_factory.mktemp("reference")
    job = _job(directory)
    proc = _start(job)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    table = read_output(directory / "out").sort_by("customer_id")
    assert table.num_rows == ROWS
    return table


def test_random_sigkills_then_resume_equals_clean_run(
    tmp_path: Path, reference: pa.Table, ledger_url: str | None
) -> None:
    job = _job(tmp_path, ledger_url)
    rng = random.Random(1234)
    kills, done, restart = 0, False, False
    for _attempt in range(80):
        proc = _start(job, args=["--restart"] if restart else [])
        time.sleep(rng.uniform(0.3, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            restart = False
            _assert_no_duplicates(tmp_path / "out")
            continue
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
        if kills >= 10:
            done = True
            break
        # Finished before 10 kills: start the job over (itself a path worth killing) and keep going.
        restart = True
    assert done and kills >= 10
    final = _start(job)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    assert b"nothing to do" in out
    assert read_output(tmp_path / "out").sort_by("customer_id").equals(reference)
    assert not (tmp_path / "out" / "_staging").exists()  # a finished job leaves no staging folder


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_commit_step_then_resume(
    tmp_path: Path, reference: pa.Table, point: str, ledger_url: str | None
) -> None:
    job = _job(tmp_path, ledger_url)
    kills = 0
    # Kill at the 1st, then the 3rd occurrence of the step, resuming in between.
    for nth in (1, 3):
        proc = _start(job, {"INFERMILL_FAULT": f"{point}:{nth}"})
        proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0
        _assert_no_duplicates(tmp_path / "out")
    # The manifest is written once per job, so only the first kill there can happen; every other step
    # is reached once per shard and is killed twice. With the random sweep's 10+, that is 22+ SIGKILLs.
    assert kills == (1 if point.endswith("manifest") else 2)
    final = _start(job)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    out = read_output(tmp_path / "out").sort_by("customer_id")
    assert out.equals(reference)
    parts = sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == 20


@pytest.mark.parametrize("point", ["after_rename", "after_commit"])
def test_kill_in_the_last_shard_leaves_no_manifest(
    tmp_path: Path, reference: pa.Table, point: str, ledger_url: str | None
) -> None:
    """The last shard's commit is the step just before the manifest: a kill there must leave none (a
    manifest means every shard is committed), and the resume's manifest lists exactly the parts on disk."""
    job = _job(tmp_path, ledger_url)
    proc = _start(job, {"INFERMILL_FAULT": f"{point}:20"})  # 20 shards: the 20th commit is the last one
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "_manifest.json").exists()
    final = _start(job)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    on_disk = sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet"))
    assert [f["path"] for f in manifest["files"]] == on_disk and len(on_disk) == 20
    assert sum(f["rows"] for f in manifest["files"]) == ROWS
    assert read_output(tmp_path / "out").sort_by("customer_id").equals(reference)
