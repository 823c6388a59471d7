"""A job folder moved (`mv`) or copied (`cp -a`) unchanged, or data mounted at another path (a container),
resumes where it stopped: no fingerprint or shard id may hold an absolute path. Real `infermill run`
subprocesses, interrupted with the fault hook after two shards are committed."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import infermill
from tests.conftest import SCORER, make_table, read_output, run_cli, write_job, write_parquet_files

ROWS = 12_000
JOB = """
name = "relocate"
[input]
path = "{input_path}"
id_column = "customer_id"
shard_rows = 2000
shard_bytes = 120000
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
workers = 1
"""


def _job(folder: Path, *, data: Path | None = None, fmt: str = "parquet") -> Path:
    """A job in ``folder``: six shards of ``ROWS`` rows, read from ``folder/data`` (given relative to the job
    file) or from ``data`` (given as an absolute path)."""
    where = data or folder / "data"
    if fmt == "parquet":
        write_parquet_files(where, ROWS, files=6, row_group_size=1_000)
    else:
        where.mkdir(parents=True)
        pacsv.write_csv(make_table(ROWS), where / "rows.csv")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scorer.py").write_text(SCORER)
    return write_job(folder / "job.toml", JOB.format(input_path=str(data) if data else "data/"))


def _interrupted(job: Path) -> dict[str, int]:
    """Run ``job`` until the fault hook kills it after its second commit; the committed result files then
    on disk, name -> mtime_ns."""
    killed = run_cli("run", str(job), "--quiet", env={"INFERMILL_FAULT": "after_commit:2"})
    assert killed.returncode == -9, killed.stderr
    parts = _committed(job.parent)
    assert len(parts) == 2
    return {name: (job.parent / "out" / name).stat().st_mtime_ns for name in parts}


def _committed(folder: Path) -> dict[str, int]:
    """Committed shards in the job's ledger: output file name -> the run that committed it."""
    with sqlite3.connect(folder / ".infermill" / "relocate.sqlite") as conn:
        rows = conn.execute("SELECT output_file, run_id FROM shards WHERE state = 'committed'").fetchall()
    return dict(rows)


def _resumed(job: Path, before: dict[str, int], reference: pa.Table) -> None:
    """Run ``job`` to the end: the shards committed before were not redone and the output is exact."""
    result = run_cli("run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    committed = _committed(job.parent)
    assert len(committed) == 6
    assert {name for name, run in committed.items() if run == 1} == set(before), "committed shards were redone"
    for name, mtime in before.items():
        assert (job.parent / "out" / name).stat().st_mtime_ns == mtime
    assert read_output(job.parent / "out").sort_by("customer_id").equals(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    job = _job(tmp_path_factory.mktemp("reference"))
    result = run_cli("run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    return read_output(job.parent / "out").sort_by("customer_id")


@pytest.mark.parametrize("command", [["mv"], ["cp", "-a"]], ids=["mv", "cp-a"])
def test_interrupted_job_resumes_after_its_folder_is_moved_or_copied(
    tmp_path: Path, reference: pa.Table, command: list[str]
) -> None:
    job = _job(tmp_path / "old" / "job")
    before = _interrupted(job)
    (tmp_path / "new").mkdir()
    subprocess.run([*command, str(job.parent), str(tmp_path / "new" / "job")], check=True)
    moved = tmp_path / "new" / "job" / "job.toml"
    _resumed(moved, before, reference)


def test_complete_job_moved_has_nothing_to_do(tmp_path: Path) -> None:
    job = _job(tmp_path / "old")
    assert run_cli("run", str(job), "--quiet").returncode == 0
    subprocess.run(["mv", str(job.parent), str(tmp_path / "new")], check=True)
    moved = tmp_path / "new" / "job.toml"
    again = run_cli("run", str(moved))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    status = run_cli("status", str(moved))
    assert status.returncode == 0 and "complete" in status.stdout, status.stdout


def test_data_mounted_at_another_absolute_path_resumes(tmp_path: Path, reference: pa.Table) -> None:
    # A container: the job folder and its ledger come along, the data is mounted elsewhere and the job file
    # names it by its new absolute path. The input is identified by what its files are, not where.
    job = _job(tmp_path / "job", data=tmp_path / "mnt-a" / "data")
    before = _interrupted(job)
    subprocess.run(["cp", "-a", str(tmp_path / "mnt-a"), str(tmp_path / "mnt-b")], check=True)
    shutil.rmtree(tmp_path / "mnt-a")
    job.write_text(job.read_text().replace(str(tmp_path / "mnt-a"), str(tmp_path / "mnt-b")))
    _resumed(job, before, reference)


def test_an_edited_input_is_still_seen_after_a_move(tmp_path: Path) -> None:
    job = _job(tmp_path / "old", fmt="csv")
    _interrupted(job)
    subprocess.run(["mv", str(job.parent), str(tmp_path / "new")], check=True)
    job = tmp_path / "new" / "job.toml"
    data = tmp_path / "new" / "data" / "rows.csv"
    text = data.read_text()
    first_row = text.index("\n") + 1
    digit = next(i for i in range(first_row, len(text)) if text[i] in "123456789")
    edited = text[:digit] + ("1" if text[digit] != "1" else "2") + text[digit + 1 :]
    data.write_text(edited)  # same size, different content
    assert len(edited) == len(text)
    # Seen as an edit (not as a move): an incremental run recomputes the edited file's shards, all of them.
    rerun = run_cli("run", str(job))
    assert rerun.returncode == 0, rerun.stderr
    assert "1 file (rows.csv) changed since the last run" in rerun.stderr
    assert 1 not in _committed(job.parent).values()


def test_restart_after_a_move_replaces_the_output(tmp_path: Path, reference: pa.Table) -> None:
    job = _job(tmp_path / "old")
    _interrupted(job)
    subprocess.run(["mv", str(job.parent), str(tmp_path / "new")], check=True)
    job = tmp_path / "new" / "job.toml"
    result = run_cli("run", str(job), "--quiet", "--restart")
    assert result.returncode == 0, result.stderr
    assert set(_committed(job.parent).values()) == {2}
    assert read_output(job.parent / "out").sort_by("customer_id").equals(reference)


def test_spec_fingerprint_holds_no_absolute_path(tmp_path: Path) -> None:
    def spec(base: Path, **sections: Any) -> infermill.JobSpec:
        data: dict[str, Any] = {
            "input": {"path": "data/"},
            "model": {"kind": "sklearn", "path": "model.skops"},
            "output": {"path": "out"},
        }
        for key, value in sections.items():
            data[key] = {**data[key], **value}
        return infermill.JobSpec.from_dict(data, base_dir=base)

    first = spec(tmp_path / "a").fingerprint()
    assert spec(tmp_path / "b" / "c").fingerprint() == first
    # The input and model are compared by content (input and model fingerprints), wherever they are.
    assert spec(tmp_path / "a", input={"path": "/mnt/data/"}).fingerprint() == first
    assert spec(tmp_path / "a", model={"path": "/models/model.skops"}).fingerprint() == first
    # The output holds the committed results: its path counts, as written.
    assert spec(tmp_path / "a", output={"path": "./out/"}).fingerprint() == first
    assert spec(tmp_path / "a", output={"path": "results"}).fingerprint() != first
    assert spec(tmp_path / "a", input={"format": "csv"}).fingerprint() != first


def test_a_ledger_from_before_relative_ids_says_so(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _interrupted(job)
    # What an earlier infermill left: descriptors without shard_id, fingerprints over absolute paths.
    with sqlite3.connect(tmp_path / ".infermill" / "relocate.sqlite") as conn:
        for shard_id, descriptor in conn.execute("SELECT shard_id, descriptor FROM shards").fetchall():
            old = json.loads(descriptor)
            del old["shard_id"]
            conn.execute("UPDATE shards SET descriptor = ? WHERE shard_id = ?", (json.dumps(old), shard_id))
        conn.execute("UPDATE jobs SET spec_fingerprint = '0123456789abcdef', input_fingerprint = 'fedcba9876543210'")
    refused = run_cli("run", str(job), "--quiet")
    assert refused.returncode == 2
    assert "earlier infermill" in refused.stderr and "--restart" in refused.stderr, refused.stderr
    assert run_cli("run", str(job), "--quiet", "--restart").returncode == 0


@pytest.mark.parametrize("kind", ["sklearn", "onnx"])
def test_a_model_file_has_the_same_fingerprint_wherever_it_is(tmp_path: Path, kind: str) -> None:
    from infermill.models import load_adapter
    from tests.models.helpers import logistic, save, spec_for, write_onnx

    name = "model.joblib" if kind == "sklearn" else "model.onnx"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        if kind == "sklearn":
            save(logistic(), tmp_path / folder / name)
        else:
            write_onnx(tmp_path / folder / name, "logistic")

    def fingerprint(base: str, path: str) -> str:
        return load_adapter(spec_for(tmp_path / base, kind=kind, path=path, trusted=True)).fingerprint()

    first = fingerprint("a", name)
    assert fingerprint("b", name) == first
    assert fingerprint("a", str(tmp_path / "b" / name)) == first
