"""A ledger written by the previous release (schema 2, one job per file) and one of the release before
(schema 1, no part checks) are migrated in place on first use: nothing is redone, every row, dead
letter, run and the lease's epoch are kept."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

import infermill
from infermill.errors import LedgerError
from infermill.ledger import open_ledger
from infermill.ledger.sqlite import SCHEMA_VERSION
from tests.conftest import read_output

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-v2"
DATA_MTIME_NS = 1_700_000_000_000_000_000  # as when the fixture was made (see fixtures/README.md)


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURE, folder)
    ledger = folder / ".infermill" / "legacy.sqlite"
    ledger.parent.mkdir()
    (folder / "legacy.sqlite").rename(ledger)
    os.utime(folder / "data" / "part-000.parquet", ns=(DATA_MTIME_NS, DATA_MTIME_NS))
    return folder / "job.toml", ledger


def _old_uid(ledger: Path) -> str:
    with sqlite3.connect(ledger) as db:
        return str(db.execute("SELECT value FROM meta WHERE key = 'job_uid'").fetchone()[0])


def test_a_ledger_of_the_previous_release_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, ledger_file = _copy(tmp_path)
    uid = _old_uid(ledger_file)
    result = infermill.run(job, progress="off")
    assert result.message.startswith("nothing to do")
    assert (result.rows_succeeded, result.rows_failed, result.shards_committed) == (297, 3, 3)
    with sqlite3.connect(ledger_file) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
            "jobs", "runs", "shards", "items", "lease", "autosize", "triggers"}
    ledger = open_ledger(str(ledger_file), job="legacy")
    try:
        assert ledger.job_uid() == uid  # the output folder stays this job's
        assert [(r.run_id, r.state) for r in ledger.runs()] == [(1, "complete")]
        assert len(ledger.dead_items()) == 3
        assert all(p.check is not None for p in ledger.committed_parts())
        assert ledger.lease_holder().token == 2  # type: ignore[union-attr]  # the epoch goes on from the old one
    finally:
        ledger.close()
    assert infermill.status(job)["state"] == "complete"
    assert infermill.verify(job).intact
    assert infermill.failures(job)["rows_failed"] == 3
    ids = sorted(read_output(job.parent / "out").column("customer_id").to_pylist())
    assert ids == [i for i in range(300) if i % 100]
    # The migrated job goes on: its dead letters are retried into attempt files of a new epoch.
    monkeypatch.setenv("FLAKY_FIXED", "1")
    fixed = infermill.retry(job)
    assert (fixed.rows_this_run, fixed.rows_failed) == (3, 0)
    assert sorted(read_output(job.parent / "out").column("customer_id").to_pylist()) == list(range(300))
    assert sorted(p.name for p in (job.parent / "out").glob("part-*")) == [
        "part-00000-a3.parquet", "part-00001-a3.parquet", "part-00002-a3.parquet"]


def test_a_schema_1_ledger_is_migrated_and_checks_presence(tmp_path: Path) -> None:
    job, ledger_file = _copy(tmp_path)
    with sqlite3.connect(ledger_file) as db:
        for column in ("output_bytes", "output_sha256", "output_mtime_ns", "errors_bytes", "errors_sha256",
                       "errors_mtime_ns"):
            db.execute(f"ALTER TABLE shards DROP COLUMN {column}")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    assert infermill.run(job, progress="off").message.startswith("nothing to do")
    report = infermill.verify(job)
    assert report.problems == [] and report.parts_unverifiable == 6  # no checks were recorded then
    (job.parent / "out" / "part-00001-a1.parquet").unlink()
    result = infermill.run(job, progress="off")  # the missing part's shard is recomputed
    assert result.rows_this_run == 100 and result.rows_failed == 3
    ids = sorted(read_output(job.parent / "out").column("customer_id").to_pylist())
    assert ids == [i for i in range(300) if i % 100]


def test_a_ledger_of_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    job, ledger_file = _copy(tmp_path)
    infermill.run(job, progress="off")
    with sqlite3.connect(ledger_file) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="schema version 99, newer than this infermill knows"):
        infermill.run(job, progress="off")
    with sqlite3.connect(ledger_file) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"


def test_a_schema_4_ledger_gains_the_triggers_table_in_place(parquet_job, job_dir: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=1_000, files=1)
    assert infermill.run(job, progress="off").state == "complete"
    ledger_file = job_dir / ".infermill" / "scores.sqlite"
    with sqlite3.connect(ledger_file) as db:  # as the release before scheduling wrote it
        db.execute("DROP TABLE triggers")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    ledger = open_ledger(str(ledger_file), job="scores")
    try:
        assert ledger.claim_trigger("cron:x", kind="cron", owner="h:1")
        assert [t.key for t in ledger.triggers()] == ["cron:x"]
        assert [r.state for r in ledger.runs()] == ["complete"]
    finally:
        ledger.close()
    with sqlite3.connect(ledger_file) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "5"
    assert infermill.run(job, progress="off").message.startswith("nothing to do")
