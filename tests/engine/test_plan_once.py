"""Plan once: a resume over an unchanged input takes its shards from the ledger (no Parquet footer read
again), every run lists the input once whatever the worker count, and a changed listing is planned again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import infermill
from infermill.sources import _fs
from infermill.sources.parquet import ParquetSource
from tests.conftest import read_output


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"list": 0, "footer": 0}
    real_list, real_metadata = _fs.list_input, ParquetSource._metadata

    def counting_list(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts["list"] += 1
        return real_list(*args, **kwargs)

    def counting_metadata(self, file):  # type: ignore[no-untyped-def]
        counts["footer"] += 1
        return real_metadata(self, file)

    monkeypatch.setattr("infermill.sources._files.list_input", counting_list)
    monkeypatch.setattr(ParquetSource, "_metadata", counting_metadata)
    return counts


def test_a_resume_reads_no_footer_again(parquet_job, job_dir: Path, counters: dict[str, int]) -> None:
    job, _ = parquet_job(rows=12_000, files=6, shard_rows=2_000)
    first = infermill.run(job, progress="off")
    assert counters == {"list": 1, "footer": 6}
    # Forget two committed shards' files: the resume redoes them from the stored plan.
    for part in sorted((job_dir / "out").glob("part-*.parquet"))[:2]:
        part.unlink()
    counters.update(list=0, footer=0)
    again = infermill.run(job, progress="off")
    assert counters == {"list": 1, "footer": 0}
    assert again.rows_this_run == 4_000 and again.rows_succeeded == first.rows_succeeded
    assert sorted(read_output(job_dir / "out").column("customer_id").to_pylist()) == list(range(12_000))


def test_a_changed_listing_is_planned_again(parquet_job, job_dir: Path, counters: dict[str, int]) -> None:
    job, _ = parquet_job(rows=6_000, files=3, shard_rows=2_000)
    infermill.run(job, progress="off")
    extra = job_dir / "data" / "part-999.parquet"
    shutil.copy(job_dir / "data" / "part-000.parquet", extra)
    counters.update(list=0, footer=0)
    result = infermill.run(job, progress="off")  # an incremental run: only the new file is planned and read
    assert counters["footer"] == 1
    assert result.rows_this_run == 2_000 and result.input_changes is not None
    assert result.input_changes.added == ("part-999.parquet",)


def test_a_moved_job_resumes_from_its_stored_plan(parquet_job, job_dir: Path, tmp_path_factory, counters) -> None:
    job, _ = parquet_job(rows=6_000, files=3, shard_rows=2_000)
    infermill.run(job, progress="off")
    moved = tmp_path_factory.mktemp("moved") / "job"
    shutil.copytree(job_dir, moved, symlinks=True, copy_function=shutil.copy2)
    for part in sorted((moved / "out").glob("part-*.parquet"))[:1]:
        part.unlink()
    counters.update(list=0, footer=0)
    result = infermill.run(moved / "job.toml", progress="off")
    assert counters["footer"] == 0 and result.rows_this_run == 2_000
    assert sorted(read_output(moved / "out").column("customer_id").to_pylist()) == list(range(6_000))


def test_two_workers_list_the_input_once(parquet_job, counters: dict[str, int]) -> None:
    job, _ = parquet_job(rows=8_000, files=4, shard_rows=2_000, workers=2)
    infermill.run(job, progress="off")
    # Worker processes are not counted here (another process): they take the planned schema and shards
    # and never list (tests/sources/test_many_files.py::test_a_run_lists_the_input_once checks that).
    assert counters["list"] == 1
