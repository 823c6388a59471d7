"""Safety of the output as a whole (issue #12): one job per output directory, committed parts that go
missing or change, fingerprints that bind only once a shard committed, --restart that checks before it
deletes, dead ends with a working way out, an output inside the input, and placement that a fenced-out run
cannot spoil."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import infermill
from infermill.errors import LeaseLostError
from infermill.ledger import Lease, open_ledger
from infermill.ledger.sqlite import SCHEMA_VERSION
from infermill.sinks import open_sink
from infermill.spec import load_spec
from tests.conftest import SCORER, read_output, run_cli, write_job, write_parquet_files

SLOW = SCORER.replace("import numpy as np", "import time\nimport numpy as np").replace(
    "    def predict(self, batch):\n", "    def predict(self, batch):\n        time.sleep(0.02)\n"
)


def _job(
    directory: Path, name: str, data: str, *, out: str = "out", model: str = "scorer.py:Scorer",
    features: str = '"f0", "f1", "f2"',
) -> Path:
    return write_job(
        directory / f"{name}.toml",
        f"""
        name = "{name}"
        [input]
        path = "{data}"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "{model}"
        features = [{features}]
        outputs = ["score"]
        [batch]
        size = 250
        [output]
        path = "{out}"
        """,
    )


def _popen(job: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermill", "run", str(job), "-q", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


def _ids(out: Path) -> list[int]:
    return sorted(read_output(out).column("customer_id").to_pylist())


def _parts_on_disk(out: Path) -> list[str]:
    return sorted([p.name for p in out.glob("part-*")] + [f"_errors/{p.name}" for p in out.glob("_errors/part-*")])


# -- 1. two jobs, one output directory ----------------------------------------------------------------
@pytest.mark.slow
def test_two_jobs_sharing_an_output_exactly_one_proceeds_ten_times(tmp_path: Path) -> None:
    for round_ in range(10):
        directory = tmp_path / f"round{round_}"
        directory.mkdir()
        (directory / "scorer.py").write_text(SLOW)
        first = write_parquet_files(directory / "a", 3_000, files=1)
        second = write_parquet_files(directory / "b", 2_000, files=1)
        jobs = {"alpha": (_job(directory, "alpha", "a/"), first), "beta": (_job(directory, "beta", "b/"), second)}
        procs = {name: _popen(job) for name, (job, _) in jobs.items()}
        results = {name: (proc.wait(timeout=120), proc.communicate()[1]) for name, proc in procs.items()}
        codes = sorted(code for code, _ in results.values())
        assert codes == [0, 2], results
        winner = next(name for name, (code, _) in results.items() if code == 0)
        loser = next(name for name in results if name != winner)
        assert f"belongs to job '{winner}'" in results[loser][1]
        manifest = json.loads((directory / "out" / "_manifest.json").read_text())
        assert manifest["job"] == winner
        assert _ids(directory / "out") == sorted(jobs[winner][1].column("customer_id").to_pylist())
        assert [f["path"] for f in manifest["files"]] == _parts_on_disk(directory / "out")
        owner = json.loads((directory / "out" / "_infermill.json").read_text())
        assert owner["job"] == winner and owner["ledger"].endswith(f"{winner}.sqlite")


def test_a_second_job_is_refused_before_it_writes_anything(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=4_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    before = {p.name: p.stat().st_mtime_ns for p in (job_dir / "out").iterdir()}
    other = job_dir / "other.toml"
    other.write_text(job.read_text().replace('name = "scores"', 'name = "other"'))
    proc = run_cli("run", str(other), "-q")
    assert proc.returncode == 2
    assert "belongs to job 'scores'" in proc.stderr and "set another '[output] path'" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (job_dir / "out").iterdir()} == before
    assert run_cli("validate", str(job)).returncode == 0


# -- 2. committed output that disappears or changes ------------------------------------------------------
def test_a_deleted_part_is_noticed_and_only_its_shard_recomputed(parquet_job, job_dir: Path) -> None:
    job, table = parquet_job(rows=5_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    out = job_dir / "out"
    victim = sorted(out.glob("part-*.parquet"))[2]
    victim.unlink()

    status = run_cli("status", str(job), "--json")
    info = json.loads(status.stdout)
    assert info["state"] == "damaged"
    assert info["damaged_parts"] == [f"{victim.name} (shard {_shard(job, 2)}) is missing"]
    verify = run_cli("verify", str(job))
    assert verify.returncode == 1 and f"damaged:  {victim.name}" in verify.stdout
    assert json.loads(run_cli("verify", str(job), "--json").stdout)["intact"] is False

    proc = run_cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert f"{victim.name} (shard {_shard(job, 2)}) is missing: its shard will be recomputed" in proc.stderr
    assert "1,000 this run" in proc.stdout
    assert _ids(out) == list(range(5_000))
    assert run_cli("verify", str(job)).returncode == 0
    assert json.loads(run_cli("status", str(job), "--json").stdout)["state"] == "complete"


def _shard(job: Path, ordinal: int) -> str:
    db = sqlite3.connect(job.parent / ".infermill" / "scores.sqlite")
    return str(db.execute("SELECT shard_id FROM shards WHERE ordinal = ?", (ordinal,)).fetchone()[0])


def test_a_changed_part_is_caught_by_verify_and_by_a_rerun(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=3_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    out = job_dir / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    entry = manifest["files"][1]
    victim = out / entry["path"]
    assert entry["bytes"] == victim.stat().st_size and len(entry["sha256"]) == 64
    # Same size, other content, and the old mtime put back: only a checksum can tell.
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = infermill.verify(job)
    assert not report.intact and [p.problem for p in report.problems] == ["checksum"]
    # A rerun looks quickly (size and mtime); once the mtime moves it hashes and recomputes.
    os.utime(victim, None)
    result = infermill.run(job, progress="off")
    assert result.rows_this_run == 1_000 and _ids(out) == list(range(3_000))
    assert infermill.verify(job).intact


def test_rm_rf_of_the_output_after_an_interrupted_run(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=5_000, files=1, shard_rows=1_000)
    proc = _popen(job, env={"INFERMILL_FAULT": "after_commit:2"})
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    shutil.rmtree(job_dir / "out")
    proc = run_cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "5,000 rows in 5 shards" in proc.stdout and "(5,000 this run" in proc.stdout
    assert _ids(job_dir / "out") == list(range(5_000))


def test_rm_rf_of_the_output_after_a_complete_run(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=3_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    shutil.rmtree(job_dir / "out")
    proc = run_cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "(3,000 this run" in proc.stdout
    assert _ids(job_dir / "out") == list(range(3_000))
    assert run_cli("verify", str(job)).returncode == 0


# -- 4. a failed first run does not bind fingerprints -----------------------------------------------------
def test_a_first_run_that_failed_in_setup_does_not_lock_in_its_fingerprint(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    good = (job_dir / "scorer.py").read_text()
    broken = good.replace("    def setup(self):\n", "    def setup(self):\n        import no_such_module\n")
    (job_dir / "scorer.py").write_text(broken)
    assert run_cli("run", str(job), "-q").returncode != 0
    (job_dir / "scorer.py").write_text(good)
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    assert _ids(job_dir / "out") == list(range(2_000))


# -- 5. --restart checks before it deletes ------------------------------------------------------------------
@pytest.mark.parametrize("breakage", ["import", "setup"])
def test_restart_with_a_broken_model_keeps_the_finished_results(parquet_job, job_dir: Path, breakage: str) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    out = job_dir / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    good = (job_dir / "scorer.py").read_text()
    broken = (
        "import no_such_module\n" + good
        if breakage == "import"
        else good.replace("    def setup(self):\n", "    def setup(self):\n        raise RuntimeError('no API key')\n")
    )
    (job_dir / "scorer.py").write_text(broken)
    proc = run_cli("run", str(job), "--restart", "-q")
    assert proc.returncode == 2, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    (job_dir / "scorer.py").write_text(good)  # undoing the edit brings the job back as it was
    proc = run_cli("run", str(job))
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr


# -- 7. dead ends --------------------------------------------------------------------------------------------
def _finished_job_with_ledger(parquet_job, job_dir: Path, content: bytes) -> Path:  # type: ignore[no-untyped-def]
    """A complete job whose ledger file is then replaced by ``content`` (its WAL files gone)."""
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    ledger = job_dir / ".infermill" / "scores.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    ledger.write_bytes(content)
    return job


def test_an_empty_ledger_names_restart_and_restart_works(parquet_job, job_dir: Path) -> None:
    job = _finished_job_with_ledger(parquet_job, job_dir, b"")
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    assert f"`infermill run {job} --restart`" in proc.stderr
    proc = run_cli("run", str(job), "--restart", "-q")
    assert proc.returncode == 0, proc.stderr
    assert _ids(job_dir / "out") == list(range(2_000))
    assert run_cli("verify", str(job)).returncode == 0


def test_a_corrupt_ledger_is_moved_aside_by_restart(parquet_job, job_dir: Path) -> None:
    job = _finished_job_with_ledger(parquet_job, job_dir, b"this is not a database" * 100)
    for command in (["run", str(job), "-q"], ["status", str(job)]):
        proc = run_cli(*command)
        assert proc.returncode == 1 and "--restart` moves it aside" in proc.stderr, proc.stderr
    proc = run_cli("run", str(job), "--restart")
    assert proc.returncode == 0, proc.stderr
    kept = list((job_dir / ".infermill").glob("scores.sqlite.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")
    assert f"moved it aside to {kept[0]}" in proc.stderr
    assert _ids(job_dir / "out") == list(range(2_000))


def test_restart_never_deletes_files_it_did_not_write(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    staging = job_dir / "out" / "_staging"
    staging.mkdir()
    (staging / "notes.txt").write_text("mine")
    (job_dir / "out" / "README.md").write_text("mine too")
    assert infermill.run(job, restart=True, progress="off").rows_this_run == 2_000
    assert (staging / "notes.txt").read_text() == "mine"
    assert (job_dir / "out" / "README.md").read_text() == "mine too"
    (job_dir / "out" / "part-00005.parquet").write_bytes(b"foreign")
    proc = run_cli("run", str(job), "--restart", "-q")
    assert proc.returncode == 2 and "did not write: part-00005.parquet" in proc.stderr
    assert "mv " in proc.stderr and "--restart" not in proc.stderr.split("hint:")[1]
    assert (job_dir / "out" / "part-00005.parquet").read_bytes() == b"foreign"


# -- 8. output inside the input --------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["data", "data/", "data/scores", "./data/x/y"])
def test_an_output_inside_the_input_is_refused(tmp_path: Path, out: str) -> None:
    (tmp_path / "scorer.py").write_text(SCORER)
    write_parquet_files(tmp_path / "data", 1_000, files=1)
    for data in ("data/", "data/*.parquet"):
        job = _job(tmp_path, "inside", data, out=out)
        for command in ("validate", "run"):
            proc = run_cli(command, str(job))
            assert proc.returncode == 2, proc.stderr
            assert "input location" in proc.stderr and "outside the input" in proc.stderr
    assert not list((tmp_path / "data").rglob("part-*-a*"))


# -- 9. a fenced-out run cannot replace a committed part ----------------------------------------------------
RUN_NAMED = '''
import os
import numpy as np


class Model:
    def predict(self, batch):
        return {"score": batch["f0"], "run": np.full(len(batch["f0"]), os.environ.get("RUN_NAME", "?"))}
'''


def test_a_fenced_out_run_cannot_replace_a_committed_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window between the fence check and the rename: a stale holder that passed its check while it
    still held the lease places its file after a newer run committed the same shard. Its rows (model
    output naming run A, and a dead letter for a row B scored) must not become part of the output."""
    (tmp_path / "model.py").write_text(RUN_NAMED)
    write_parquet_files(tmp_path / "data", 2_000, files=1)
    job = write_job(tmp_path / "job.toml", """
        name = "fenced"
        [input]
        path = "data/"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "model.py:Model"
        features = ["f0"]
        outputs = ["score", "run"]
        [output]
        path = "out"
        """)
    monkeypatch.setenv("RUN_NAME", "B")
    infermill.run(job, progress="off")
    spec = load_spec(job)
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    sink = open_sink(spec)
    committed = {p.name: p.check for p in ledger.committed_parts()}
    shard = ledger.shards()[0]
    # Run A held the lease before B took it over: its token is B's minus one.
    token = ledger.lease_holder().token  # type: ignore[union-attr]
    stale = Lease(token=token - 1, host="elsewhere", pid=1)
    sink.prepare()  # A staged its files while it held the lease
    writer = sink.open_writer(shard.ordinal)
    writer.write(pa.table({"customer_id": pa.array(range(1_000), pa.int64()), "score": [0.0] * 1_000,
                           "run": ["A"] * 1_000}))
    errors = sink.open_writer(shard.ordinal, errors=True)
    errors.write(pa.table({"customer_id": pa.array([7], pa.int64()), "_error_class": ["ValueError"]}))
    from infermill.engine.runner import commit_shard

    monkeypatch.setattr(ledger, "check_fence", lambda lease: None)  # A is past its check, in the window
    with pytest.raises(LeaseLostError):
        commit_shard(ledger, stale, sink, shard.shard_id, writer.close(), errors.close(),
                     dead_items=[("7", 7, 1, "ValueError", "item", "stale", "")], run_id=1)
    assert {p.name: p.check for p in ledger.committed_parts()} == committed
    ledger.close()
    report = infermill.verify(job)
    assert report.intact and len(report.extra_files) == 2  # A's files: debris, not output
    assert infermill.run(job, progress="off").message.startswith("nothing to do")
    out = read_output(tmp_path / "out")
    assert set(out.column("run").to_pylist()) == {"B"}
    assert sorted(out.column("customer_id").to_pylist()) == list(range(2_000))
    assert not list((tmp_path / "out").glob("_errors/*"))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == _parts_on_disk(tmp_path / "out")


def test_attempt_files_carry_the_lease_epoch(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    token = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite").execute("SELECT token FROM lease").fetchone()[0]
    assert _parts_on_disk(job_dir / "out") == [f"part-00000-a{token}.parquet", f"part-00001-a{token}.parquet"]
    assert oct((job_dir / "out" / "_manifest.json").stat().st_mode & 0o777) == oct(
        (job_dir / "out" / f"part-00000-a{token}.parquet").stat().st_mode & 0o777
    )


def test_a_ledger_of_the_previous_release_is_migrated(parquet_job, job_dir: Path) -> None:
    """Schema version 1 (no checks): columns are added in place and old parts are checked for presence."""
    job, _ = parquet_job(rows=2_000, files=1, shard_rows=1_000)
    infermill.run(job, progress="off")
    path = job_dir / ".infermill" / "scores.sqlite"
    db = sqlite3.connect(path)
    for column in ("output_bytes", "output_sha256", "output_mtime_ns", "errors_bytes", "errors_sha256",
                   "errors_mtime_ns"):
        db.execute(f"ALTER TABLE shards DROP COLUMN {column}")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    assert infermill.run(job, progress="off").message.startswith("nothing to do")
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert "output_sha256" in {r[1] for r in db.execute("PRAGMA table_info(shards)")}


def test_retry_refuses_to_merge_into_a_missing_part(tmp_path: Path) -> None:
    """Retry rewrites a shard's part as old rows + fixed rows: with the part gone it would drop the old rows."""
    (tmp_path / "model.py").write_text(FLAKY)
    write_parquet_files(tmp_path / "data", 2_000, files=1)
    job = _job(tmp_path, "flaky", "data/", model="model.py:Model", features='"customer_id", "f0"')
    assert infermill.run(job, progress="off").rows_failed == 20
    victim = sorted((tmp_path / "out").glob("part-*.parquet"))[0]
    victim.unlink()
    proc = run_cli("retry", str(job), env={"FLAKY_FIXED": "1"})
    assert proc.returncode == 1 and f"{victim.name}" in proc.stderr and f"`infermill run {job}`" in proc.stderr
    assert run_cli("run", str(job), "-q").returncode == 0
    assert run_cli("retry", str(job), env={"FLAKY_FIXED": "1"}).returncode == 0
    assert _ids(tmp_path / "out") == list(range(2_000))


FLAKY = '''
import os
import numpy as np
from infermill import ItemError


class Model:
    def predict(self, batch):
        if os.environ.get("FLAKY_FIXED") != "1" and (batch["customer_id"] % 100 == 0).any():
            raise ItemError("row ends in 00")
        return {"score": batch["f0"]}
'''
