"""The bottleneck verdict on synthetic timings, and the profile command on a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.cli import main
from infermill.engine.profile import profile
from infermill.models.python import PythonModel
from infermill.observe.profile import profile_from_stats
from tests.conftest import write_job


def _shard(**stages: float) -> dict[str, float]:
    return {"rows": 1000, "read_s": 0.0, "preprocess_s": 0.0, "model_s": 0.0, "model_wait_s": 0.0, "write_s": 0.0,
            "wall_s": 10.0, **stages}


def test_model_bound() -> None:
    report = profile_from_stats([_shard(model_s=9.6, read_s=1.4, write_s=0.3)] * 3)
    assert report.verdict == "model-bound: model busy 96% of wall time; reader busy 14%, writer busy 3%"
    assert "larger batch" in report.suggestion
    assert report.rows == 3000 and report.stages["model_s"] == pytest.approx(28.8)


def test_input_bound() -> None:
    report = profile_from_stats([_shard(model_s=5.0, model_wait_s=4.1, read_s=8.8)])
    assert report.verdict.startswith("input-bound: the model waited 41% of the time for data; reader busy 88%")
    assert "runtime.workers" in report.suggestion


def test_output_bound() -> None:
    report = profile_from_stats([_shard(model_s=4.0, model_wait_s=5.0, read_s=1.0, write_s=9.0)])
    assert report.verdict.startswith("output-bound")
    assert "local disk" in report.suggestion


def test_overhead_bound_and_empty() -> None:
    assert profile_from_stats([_shard(model_s=3.0, model_wait_s=0.5)]).verdict.startswith("overhead-bound")
    assert profile_from_stats([]).verdict == "no timings recorded yet"


def test_profile_command_after_a_run(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    assert main(["run", str(job)]) == 0
    out = capsys.readouterr().out
    assert "profile: " in out and "suggestion: " in out
    assert main(["profile", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 20_000 and report["shards"] == 5
    assert set(report["stages"]) >= {"read_s", "model_s", "write_s", "wall_s"}
    assert {"inbox_depth", "outbox_depth"} <= set(report["counters"])  # queue depths, averaged per batch
    assert main(["profile", str(job)]) == 0
    assert capsys.readouterr().out.startswith("profile: ")


def test_profile_before_any_run(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    assert main(["profile", str(job)]) == 2
    assert "has not run yet" in capsys.readouterr().err


# -- verdicts from real runs: start-up apart from the steady state, idle lanes -----------------------------

PROFILED_MODEL = '''
import time

import numpy as np


class Model:
    def __init__(self, load_s=0.0, per_call_s=0.0, per_slow_row_s=0.0):
        self.load_s, self.per_call_s, self.per_slow_row_s = load_s, per_call_s, per_slow_row_s

    def setup(self):
        time.sleep(self.load_s)  # loading the weights

    def predict(self, batch):
        texts = batch["text"]
        slow = sum(t.startswith("slow") for t in texts)
        time.sleep(self.per_call_s + self.per_slow_row_s * slow)
        return np.array([len(t) for t in texts])
'''


def _profiled_job(directory: Path, rows: int, options: str, batch: str = "", slow_rows: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    texts = [("slow" if i < slow_rows else "fast") + "x" * (i % 17) for i in range(rows)]
    pq.write_table(pa.table({"id": np.arange(rows), "text": texts}), directory / "data" / "t.parquet")
    (directory / "model.py").write_text(PROFILED_MODEL)
    return write_job(directory / "job.toml", f"""
        name = "profiled"
        [input]
        path = "data/"
        id_column = "id"
        [model]
        kind = "python"
        entrypoint = "model.py:Model"
        features = ["text"]
        [model.options]
        {options}
        {batch}
        [output]
        path = "out"
        """)


def test_a_run_mostly_spent_loading_the_model_is_start_up_bound(tmp_path: Path) -> None:
    job = _profiled_job(tmp_path, 20, "load_s = 1.0")
    result = infermill.run(job, progress="off")
    assert result.verdict[0].startswith("profile: start-up-bound: start-up took")
    report = profile(job)
    assert report.verdict.startswith("start-up-bound")
    assert "batch" not in report.suggestion.split(":")[0] and "more rows per run" in report.suggestion
    assert report.timeline is not None and report.timeline.setup_s >= 1.0
    assert report.timeline.startup_s >= 1.0 > report.timeline.steady_s


def test_one_batch_on_two_lanes_with_all_the_work_in_one_piece_is_idle_lanes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PythonModel, "lanes", lambda self: 2)
    # 300 rows in one batch, cut in two pieces for the two lanes; the first piece holds all the slow rows.
    job = _profiled_job(tmp_path, 300, "per_slow_row_s = 0.01", slow_rows=150)
    infermill.run(job, progress="off")
    report = profile(job)
    assert report.verdict.startswith("idle lanes: 2 lanes busy only"), report.lines()
    assert report.lanes_busy is not None and report.lanes_busy < 0.7
    assert "a batch too large for the job (300 rows in 1 batch(es) for 2 lanes)" in report.suggestion
    assert "set batch.size to about 37" in report.suggestion


def test_a_run_spent_in_the_model_is_model_bound(tmp_path: Path) -> None:
    job = _profiled_job(tmp_path, 300, "per_call_s = 0.05", batch="[batch]\nsize = 10")
    result = infermill.run(job, progress="off")
    report = profile(job)
    assert report.verdict.startswith("model-bound"), report.lines()
    assert result.verdict[0] == f"profile: {report.verdict}"
    assert report.timeline is not None and report.timeline.steady_s >= 1.5
    assert report.timeline.startup_s < report.timeline.steady_s
    assert any(line.startswith("  start-up ") for line in report.lines())


def test_stats_of_an_older_ledger_still_profile() -> None:
    old = [{"rows": 1000, "batches": 1, "calls": 1, "read_s": 0.1, "preprocess_s": 0.0, "model_s": 4.9,
            "model_wait_s": 0.0, "write_s": 0.1, "wall_s": 10.0}]
    report = profile_from_stats(old, runs=[(1_000.0, 1_020.0)])
    assert report.timeline is None and report.lanes_busy is None
    assert report.verdict.startswith("overhead-bound")
    assert report.suggestion == "time goes between the model's calls, not in them: compare the reader and " \
        "writer shares above; more workers (runtime.workers) overlap them"
    assert profile_from_stats([{**old[0], "calls": 100}]).suggestion.startswith("per-batch overhead dominates")


def test_lanes_busy_counts_a_workers_overlapping_shards_once() -> None:
    # One worker, 2 lanes, two shards in flight at once (one read while the other is scored): the lanes had
    # 2 x 2.5 s (the union of the spans), not 2 x (2.0 + 2.0) s; busy 4.6 s of 5 is a busy run, not idle lanes.
    shard = {"rows": 1_000, "batches": 4, "read_s": 0.2, "preprocess_s": 0.0, "model_s": 2.3, "model_wait_s": 0.0,
             "write_s": 0.1, "wall_s": 2.0, "lanes": 2, "lane_busy_s": 2.3, "worker": 0}
    stats = [{**shard, "started_at": 100.0, "ended_at": 102.0}, {**shard, "started_at": 100.5, "ended_at": 102.5}]
    found = profile_from_stats(stats, [(99.9, 102.6)])
    assert found.lanes_busy == 0.92
    assert not found.verdict.startswith("idle lanes")
    # Two workers' shards at the same time are two workers' lanes, not one's.
    apart = [{**stats[0], "worker": 0}, {**stats[1], "worker": 1}]
    assert profile_from_stats(apart, [(99.9, 102.6)]).lanes_busy == round(4.6 / 8, 3)
