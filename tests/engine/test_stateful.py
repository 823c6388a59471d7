"""A Hypothesis state machine over {process some batches then crash, crash at a commit step, resume,
transient errors, retry}, each step a real `infermill` subprocess. After every step the committed output
(the files the ledger records as committed) holds only input ids, each at most once, and no id is both
scored and dead-lettered; any other part file on disk is an attempt-named file of a killed step (debris,
swept by the next run); a manifest exists only when every shard is committed, and then lists exactly the
part files on disk with their row counts. At the end, after a resume and a retry with the fixed model, the
output equals the input exactly."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from infermill.engine.faults import POINTS
from tests.conftest import write_job, write_parquet_files

pytestmark = pytest.mark.slow

ROWS = 3_000
MODEL = '''
import os
import random
from infermill import ItemError, TransientError


class Model:
    def setup(self):
        self.rng = random.Random(os.getpid())

    def predict(self, batch):
        if self.rng.random() < float(os.environ.get("SM_TRANSIENT", "0")):
            raise TransientError("flaky (simulated)")
        if os.environ.get("SM_POISON") == "1" and (batch["customer_id"] % 97 == 0).any():
            raise ItemError("poisoned row (simulated)")
        return {"score": batch["f0"] * 3 + batch["customer_id"]}
'''


def _run(directory: Path, command: str, env: dict[str, str]) -> int:
    quiet = ["-q"] if command == "run" else []
    proc = subprocess.run(
        [sys.executable, "-m", "infermill", command, str(directory / "job.toml"), *quiet],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    never_ran = command == "retry" and "has not run yet" in proc.stderr
    assert proc.returncode in (0, -9) or (proc.returncode == 2 and never_ran), proc.stderr
    return proc.returncode


def _ids(files: list[Path]) -> list[int]:
    if not files:
        return []
    return pa.concat_arrays(
        [pq.read_table(f, columns=["customer_id"]).column(0).combine_chunks() for f in files]
    ).to_pylist()


@settings(max_examples=10, stateful_step_count=5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="infermill-sm-"))
        write_parquet_files(self.dir / "data", ROWS, files=3, row_group_size=250)
        (self.dir / "model.py").write_text(MODEL)
        write_job(self.dir / "job.toml", """
            name = "sm"
            [input]
            path = "data/"
            id_column = "customer_id"
            shard_rows = 500
            [model]
            kind = "python"
            entrypoint = "model.py:Model"
            features = ["customer_id", "f0"]
            outputs = ["score"]
            [batch]
            size = 100
            [output]
            path = "out"
            [retry]
            max_attempts = 12
            backoff_seconds = 0.001
            """)

    @rule(batches=st.integers(1, 25))
    def process_some_batches_then_crash(self, batches: int) -> None:
        _run(self.dir, "run", {"INFERMILL_FAULT": f"after_batch:{batches}", "SM_POISON": "1"})

    @rule(point=st.sampled_from(POINTS), nth=st.integers(1, 3))
    def crash_at_commit_step(self, point: str, nth: int) -> None:
        _run(self.dir, "run", {"INFERMILL_FAULT": f"{point}:{nth}", "SM_POISON": "1"})

    @rule()
    def resume(self) -> None:
        assert _run(self.dir, "run", {"SM_POISON": "1"}) == 0

    @rule()
    def transient_errors(self) -> None:
        assert _run(self.dir, "run", {"SM_POISON": "1", "SM_TRANSIENT": "0.3"}) == 0

    @rule(point=st.sampled_from(["", "before_rename", "after_rename", "after_commit"]))
    def retry_with_fixed_model(self, point: str) -> None:
        env = {"INFERMILL_FAULT": f"{point}:1"} if point else {}
        _run(self.dir, "retry", env)

    def _committed(self) -> tuple[list[Path], list[Path]]:
        """The files the ledger records as committed: (results, dead letters)."""
        ledger = self.dir / ".infermill" / "sm.sqlite"
        if not ledger.exists():
            return [], []
        db = sqlite3.connect(ledger)
        try:
            rows = db.execute("SELECT output_file, errors_file FROM shards WHERE state = 'committed'").fetchall()
        except sqlite3.OperationalError:  # the ledger is being created
            return [], []
        finally:
            db.close()
        out = self.dir / "out"
        return [out / r[0] for r in rows if r[0]], [out / r[1] for r in rows if r[1]]

    @invariant()
    def committed_ids_are_a_subset_without_duplicates(self) -> None:
        files, error_files = self._committed()
        scored = _ids(files)
        dead = _ids(error_files)
        assert len(scored) == len(set(scored)), "duplicate scored id"
        assert len(dead) == len(set(dead)), "duplicate dead-lettered id"
        assert set(scored) <= set(range(ROWS))
        assert set(scored).isdisjoint(dead)
        out = self.dir / "out"
        others = {p for p in [*out.glob("part-*"), *out.glob("_errors/part-*")]} - {*files, *error_files}
        assert all(re.fullmatch(r"part-\d{5}-a\d+\.parquet", p.name) for p in others), others

    @invariant()
    def a_manifest_means_complete_and_lists_exactly_the_parts_on_disk(self) -> None:
        out = self.dir / "out"
        manifest_path = out / "_manifest.json"
        if not manifest_path.exists():
            return
        manifest = json.loads(manifest_path.read_text())
        db = sqlite3.connect(self.dir / ".infermill" / "sm.sqlite")
        try:
            states = {r[0] for r in db.execute("SELECT DISTINCT state FROM shards")}
        finally:
            db.close()
        assert states == {"committed"}, f"a manifest while shards are {states}"
        listed = {f["path"]: f["rows"] for f in [*manifest["files"], *manifest["error_files"]]}
        on_disk = sorted(p.relative_to(out).as_posix() for p in [*out.glob("part-*"), *out.glob("_errors/part-*")])
        assert sorted(listed) == on_disk
        for name, rows in listed.items():
            assert pq.read_metadata(out / name).num_rows == rows

    def teardown(self) -> None:
        try:
            assert _run(self.dir, "run", {"SM_POISON": "1"}) == 0
            assert _run(self.dir, "retry", {}) == 0
            out = self.dir / "out"
            table = pa.concat_tables([pq.read_table(f) for f in self._committed()[0]])
            assert sorted(table.column("customer_id").to_pylist()) == list(range(ROWS))
            table = table.sort_by("customer_id")
            f0 = pq.read_table(self.dir / "data").sort_by("customer_id").column("f0").to_numpy()
            expected = f0 * 3 + table.column("customer_id").to_numpy()
            assert (table.column("score").to_numpy() == expected).all()
            assert not list(out.glob("_errors/part-*"))
        finally:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


TestJobMachine = JobMachine.TestCase
