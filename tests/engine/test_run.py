"""End-to-end runs through the library API: output, manifest, ledger, resume rules."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import JobChangedError, OutputError
from tests.conftest import expected_score, read_output


def test_run_scores_every_row_once(parquet_job, job_dir: Path) -> None:
    job, table = parquet_job(rows=20_000, files=4, shard_rows=4_000)
    result = infermill.run(job, progress="off")
    assert result.state == "complete"
    assert result.rows_succeeded == 20_000 == result.rows_total
    assert result.shards_committed == result.shards_total == 5
    out = read_output(job_dir / "out").sort_by("customer_id")
    assert out.column_names == ["customer_id", "segment", "score"]
    assert out.column("customer_id").to_pylist() == list(range(20_000))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(table))
    assert out.column("segment").to_pylist() == table.column("segment").to_pylist()


def test_manifest_lists_every_file(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=10_000, files=2, shard_rows=3_000)
    infermill.run(job, progress="off")
    manifest = json.loads((job_dir / "out" / "_manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["rows_total"] == 10_000
    on_disk = sorted(p.name for p in (job_dir / "out").glob("part-*.parquet"))
    assert [f["path"] for f in manifest["files"]] == on_disk
    for entry in manifest["files"]:
        assert pq.read_metadata(job_dir / "out" / entry["path"]).num_rows == entry["rows"]
    assert not (job_dir / "out" / "_staging").exists()  # a finished job leaves no staging folder


def test_small_files_are_merged_into_shards(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=8_000, files=8, shard_rows=4_000)
    result = infermill.run(job, progress="off")
    assert result.shards_total == 2
    assert len(list((job_dir / "out").glob("part-*.parquet"))) == 2


def test_ledger_records_job_runs_and_shards(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job()
    infermill.run(job, progress="off")
    db = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    states = db.execute("SELECT state, COUNT(*), SUM(rows_out) FROM shards GROUP BY state").fetchall()
    assert states == [("committed", 5, 20_000)]
    assert db.execute("SELECT state FROM runs").fetchall() == [("complete",)]
    stats = json.loads(db.execute("SELECT stats FROM shards LIMIT 1").fetchone()[0])
    assert stats["rows"] == 4_000 and stats["model_s"] >= 0


def test_rerun_of_complete_job_does_nothing(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job()
    infermill.run(job, progress="off")
    before = {p.name: p.stat().st_mtime_ns for p in (job_dir / "out").glob("part-*")}
    again = infermill.run(job, progress="off")
    assert again.message.startswith("nothing to do")
    assert again.rows_this_run == 0
    assert {p.name: p.stat().st_mtime_ns for p in (job_dir / "out").glob("part-*")} == before


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("spec", "the job spec"),
        ("model", "the model"),
        # A changed input alone is an incremental run (tests/engine/test_incremental.py); with a changed
        # spec it is refused like the spec.
        ("spec+input", "the job spec and the input files"),
    ],
)
def test_changes_since_last_run_are_refused(parquet_job, job_dir: Path, change: str, what: str) -> None:
    job, _ = parquet_job()
    infermill.run(job, progress="off")
    if change.startswith("spec"):
        job.write_text(job.read_text().replace("size = 1000", "size = 500"))
    if change == "model":
        scorer = job_dir / "scorer.py"
        scorer.write_text(scorer.read_text().replace("0.5, 1.0", "0.6, 1.0"))
    if change.endswith("input"):
        first = job_dir / "data" / "part-000.parquet"
        pq.write_table(pq.read_table(first).slice(0, 10), first)
    with pytest.raises(JobChangedError) as err:
        infermill.run(job, progress="off")
    assert what in str(err.value) and "--restart" in str(err.value)
    result = infermill.run(job, restart=True, progress="off")
    assert result.state == "complete" and result.rows_this_run == result.rows_succeeded


def test_runtime_settings_do_not_force_restart(parquet_job) -> None:
    job, _ = parquet_job()
    infermill.run(job, progress="off")
    job.write_text(job.read_text().replace("workers = 1", "workers = 2"))
    assert infermill.run(job, progress="off").message.startswith("nothing to do")


def test_foreign_files_in_output_are_not_overwritten(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job()
    (job_dir / "out").mkdir()
    (job_dir / "out" / "part-00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="holds result files that job 'scores' did not write: part-00000.parquet"):
        infermill.run(job, progress="off")
    assert (job_dir / "out" / "part-00000.parquet").read_bytes() == b"someone else's"
    # --restart does not delete it either: infermill deletes only files it wrote.
    with pytest.raises(OutputError, match="did not write"):
        infermill.run(job, restart=True, progress="off")
    assert (job_dir / "out" / "part-00000.parquet").read_bytes() == b"someone else's"


def test_workers_2_equals_workers_1(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=12_000, files=3, shard_rows=2_000, workers=1)
    infermill.run(job, progress="off")
    one = read_output(job_dir / "out").sort_by("customer_id")
    job.write_text(job.read_text().replace("workers = 1", "workers = 2"))
    result = infermill.run(job, restart=True, progress="off")
    assert result.rows_succeeded == 12_000
    two = read_output(job_dir / "out").sort_by("customer_id")
    assert one.equals(two)


def test_a_run_does_not_wait_for_its_worker_processes_to_tear_down(parquet_job, job_dir: Path) -> None:
    """Once a worker has sent its last event, the run finishes without waiting for the process to end:
    here each worker's exit hook sleeps 60 s. Waiting for it would take 2 x 15 s (join, then terminate,
    which workers ignore, then join again)."""
    import multiprocessing
    import time

    (job_dir / "slow_exit.py").write_text(
        "import atexit, time\n"
        "from scorer import Scorer\n"
        "atexit.register(time.sleep, 60)  # a worker's slow teardown\n"
        "class SlowExit(Scorer):\n"
        "    pass\n"
    )
    job, table = parquet_job(rows=4_000, files=2, shard_rows=1_000, workers=2)
    job.write_text(job.read_text().replace("scorer.py:Scorer", "slow_exit.py:SlowExit"))
    started = time.monotonic()
    try:
        result = infermill.run(job, progress="off")
        elapsed = time.monotonic() - started
    finally:
        for child in multiprocessing.active_children():  # the workers, still in their exit hooks
            child.kill()
            child.join(10)
    assert result.state == "complete" and result.rows_succeeded == 4_000
    assert read_output(job_dir / "out").num_rows == 4_000
    assert elapsed < 15, f"the run waited {elapsed:.1f}s for its workers' teardown"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_output_formats(parquet_job, job_dir: Path, fmt: str) -> None:
    job, table = parquet_job(rows=3_000, files=1, shard_rows=1_000, output_format=fmt)
    infermill.run(job, progress="off")
    out = read_output(job_dir / "out", fmt).sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(3_000))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(table), rtol=1e-12)
    assert sorted(p.suffix for p in (job_dir / "out").glob("part-*")) == [f".{fmt}"] * 3


def test_status_reports_states(parquet_job) -> None:
    job, _ = parquet_job()
    assert infermill.status(job)["state"] == "pending"
    infermill.run(job, progress="off")
    info = infermill.status(job)
    assert info["state"] == "complete"
    assert (info["rows_total"], info["rows_succeeded"], info["rows_failed"]) == (20_000, 20_000, 0)
    assert (info["shards_total"], info["shards_committed"]) == (5, 5)


def test_python_api_spec(job_dir: Path) -> None:
    from tests.conftest import write_parquet_files

    write_parquet_files(job_dir / "data", 1_000, 1)
    spec = infermill.JobSpec(
        name="api",
        input=infermill.InputSpec(path="data/", id_column="customer_id"),
        model=infermill.ModelSpec(kind="python", entrypoint="scorer.py:Scorer", features=["f0", "f1", "f2"],
                                  outputs=["score"]),
        output=infermill.OutputSpec(path="out"),
        base_dir=str(job_dir),
    )
    result = infermill.run(spec, progress="off")
    assert result.rows_succeeded == 1_000
    assert (job_dir / ".infermill" / "api.sqlite").exists()


def test_result_neutral_model_settings_are_not_fingerprinted() -> None:
    base = {
        "input": {"path": "x.parquet"},
        "model": {"kind": "http", "protocol": "openai-chat", "url": "http://127.0.0.1:9", "prompt_column": "t",
                  "concurrency": 4},
        "output": {"path": "o"},
    }
    first = infermill.JobSpec.from_dict(base)
    base["model"]["concurrency"] = 16
    assert infermill.JobSpec.from_dict(base).fingerprint() == first.fingerprint()
    base["model"]["temperature"] = 0.5
    assert infermill.JobSpec.from_dict(base).fingerprint() != first.fingerprint()


def test_parquet_output_has_large_row_groups_and_plain_floats(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=20_000, files=1, shard_rows=20_000, batch=1_000)
    infermill.run(job, progress="off")
    (part,) = (job_dir / "out").glob("part-*.parquet")
    meta = pq.read_metadata(part)
    assert meta.num_row_groups == 1  # not one row group per model batch
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(3)}
    assert "PLAIN_DICTIONARY" not in str(columns["score"].encodings) and "RLE_DICTIONARY" not in str(
        columns["score"].encodings
    )
    assert "DICTIONARY" in str(columns["segment"].encodings)  # text still gets dictionary encoding


def test_a_worker_process_that_dies_is_reported(parquet_job, job_dir: Path) -> None:
    (job_dir / "dying.py").write_text(
        "import os\n"
        "class Dying:\n"
        "    def setup(self):\n"
        "        os._exit(7)  # what an OOM kill or a crash in native code looks like from outside\n"
        "    def predict(self, batch):\n"
        "        return batch['f0']\n"
    )
    job, _ = parquet_job(workers=2)
    job.write_text(job.read_text().replace("scorer.py:Scorer", "dying.py:Dying"))
    with pytest.raises(infermill.InfermillError, match=r"worker process \d ended unexpectedly \(exit code 7\)") as err:
        infermill.run(job, progress="off")
    assert "__main__" in str(err.value)
    assert infermill.status(job)["state"] == "failed"


def test_run_result_carries_what_the_cli_prints(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=4_000, files=1, shard_rows=2_000)
    first = infermill.run(job, progress="off")
    assert not first.already_complete
    assert first.lines()[0].startswith("scores: complete: 4,000 rows in 2 shards (4,000 this run")
    assert first.verdict[0].startswith("profile: ") and first.verdict[1].startswith("  suggestion: ")
    again = infermill.run(job, progress="off")
    assert again.already_complete and again.rows_this_run == 0
    assert again.lines() == [f"scores: nothing to do: the job is already complete (4,000 rows in {job_dir / 'out'})"]
