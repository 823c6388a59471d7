"""The bottleneck verdict on synthetic timings, and the profile command on a real run."""

from __future__ import annotations

import json

import pytest

from infermill.cli import main
from infermill.observe.profile import profile_from_stats


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
