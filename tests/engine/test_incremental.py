"""Incremental runs: a rerun over an input that gained, changed or lost files scores only what is new or
changed, removes (or keeps) the rows of deleted files, and its output always equals a run from scratch
over the input as it is now; path templates (``data/{date}/*.parquet``) fill ``--param`` values."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.engine.events import Event, InputChanged
from infermill.errors import InputError, JobChangedError, SpecError
from infermill.spec import load_spec
from tests.conftest import SCORER, make_table, read_output, run_cli, write_job
from tests.postgres import ledger_line

JOB = """
name = "inc"
[input]
path = "{path}"
id_column = "customer_id"
shard_rows = 1000
{extra}
[model]
kind = "python"
entrypoint = "scorer.py:Scorer"
features = ["f0", "f1", "f2"]
outputs = ["score"]
[batch]
size = 250
[output]
path = "out"
keep = ["segment"]
"""


def _file(folder: Path, name: str, start: int, rows: int, seed: int = 0) -> None:
    """A Parquet file of ids ``start .. start + rows``, in row groups of 500."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    existed = path.exists()
    pq.write_table(make_table(rows, seed=seed, start_id=start), path, row_group_size=500)
    if existed:  # a rewrite in the same clock tick must still look changed
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _job(folder: Path, path: str = "data/", extra: str = "", ledger: str | None = None) -> Path:
    (folder / "scorer.py").write_text(SCORER)
    body = JOB.replace("{path}", path).replace("{extra}", extra)
    return write_job(folder / "job.toml", body + (f"[runtime]\n{ledger_line(ledger)}\n" if ledger else ""))


def _scratch(data: Path, where: Path) -> pa.Table:
    """What a run from scratch over ``data`` as it is now writes (sorted by id)."""
    shutil.copytree(data, where / "data")
    job = _job(where)
    infermill.run(job, progress="off")
    return read_output(where / "out").sort_by("customer_id")


def _output(folder: Path) -> pa.Table:
    """The job's output as its manifest lists it; the manifest lists exactly the part files on disk."""
    out = folder / "out"
    manifest = json.loads((out / "_manifest.json").read_text())
    on_disk = sorted(p.name for p in out.glob("part-*"))
    assert sorted(f["path"] for f in manifest["files"]) == on_disk
    table = read_output(out).sort_by("customer_id")
    assert manifest["rows_total"] == table.num_rows
    ids = table.column("customer_id").to_pylist()
    assert len(ids) == len(set(ids)), "an id is in the output twice"
    return table


def _parts(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "out").glob("part-*")}


def _cli_run(job: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if fault:
        env["INFERMILL_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "infermill", "run", str(job), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


class _Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def changes(self) -> list[InputChanged]:
        return [e for e in self.events if isinstance(e, InputChanged)]


def _round0(folder: Path, ledger: str | None = None) -> Path:
    data = folder / "data"
    _file(data, "a.parquet", 0, 400)
    _file(data, "b.parquet", 1_000, 400, seed=1)  # a and b share a shard (400 + 400 < shard_rows)
    _file(data, "c.parquet", 2_000, 1_500, seed=2)  # c is two shards of its own
    job = _job(folder, ledger=ledger)
    result = infermill.run(job, progress="off")
    assert result.shards_total == 3 and result.input_changes is None
    return job


def test_added_file_is_the_only_work_and_kept_parts_stay(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    before = _parts(tmp_path)
    _file(tmp_path / "data", "d.parquet", 5_000, 300, seed=3)
    events = _Events()
    result = infermill.run(job, progress="off", subscribers=[events])
    assert result.rows_this_run == 300 and result.rows_succeeded == 2_600
    assert result.already_complete is False
    [change] = events.changes()
    assert (change.added, change.changed, change.deleted) == (("d.parquet",), (), ())
    assert (change.shards_kept, change.shards_removed, change.shards_added) == (3, 0, 1)
    assert result.input_changes == change
    after = _parts(tmp_path)
    assert {n: after[n] for n in before} == before  # untouched, same names
    assert len(after) == 4
    assert _output(tmp_path).equals(_scratch(tmp_path / "data", tmp_path / "scratch"))
    # Nothing changed since: a plain resume, nothing reported.
    again = infermill.run(job, progress="off")
    assert again.already_complete and again.input_changes is None


def test_changed_file_recomputes_only_its_shard(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    before = _parts(tmp_path)
    _file(tmp_path / "data", "b.parquet", 1_000, 450, seed=11)  # b's shard holds a too: both are redone
    result = infermill.run(job, progress="off")
    assert result.rows_this_run == 850
    change = result.input_changes
    assert change is not None and change.changed == ("b.parquet",)
    assert (change.shards_kept, change.shards_removed, change.shards_added) == (2, 1, 1)
    after = _parts(tmp_path)
    c_parts = sorted(before)[1:]  # part-00001, part-00002: c's shards
    assert {n: after[n] for n in c_parts} == {n: before[n] for n in c_parts}
    assert sorted(before)[0] not in after  # the old a+b part is gone; the new one has a new ordinal
    assert "part-00003" in " ".join(after)
    assert _output(tmp_path).equals(_scratch(tmp_path / "data", tmp_path / "scratch"))


def test_deleted_file_rows_leave_the_output(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    (tmp_path / "data" / "c.parquet").unlink()
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_this_run == 0 and result.rows_succeeded == 800
    assert result.input_changes is not None and result.input_changes.deleted == ("c.parquet",)
    assert result.shards_total == 1
    assert _output(tmp_path).equals(_scratch(tmp_path / "data", tmp_path / "scratch"))


def test_on_deleted_keep_keeps_the_rows(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    full = _output(tmp_path)
    job.write_text(job.read_text().replace("shard_rows = 1000", 'shard_rows = 1000\non_deleted = "keep"'))
    (tmp_path / "data" / "c.parquet").unlink()
    result = infermill.run(job, progress="off")  # on_deleted is no part of the fingerprint: no restart
    assert result.input_changes is not None and result.input_changes.deleted_kept
    assert "rows kept" in "\n".join(result.lines())
    assert _output(tmp_path).equals(full)
    # The kept shards name a file that is gone; later runs resume over them without reporting it again.
    _file(tmp_path / "data", "d.parquet", 5_000, 300, seed=3)
    result = infermill.run(job, progress="off")
    assert result.input_changes is not None and result.input_changes.added == ("d.parquet",)
    assert result.input_changes.deleted == ("c.parquet",) and result.rows_succeeded == 2_600
    again = infermill.run(job, progress="off")
    assert again.already_complete and again.input_changes is None
    assert _output(tmp_path).num_rows == 2_600


def test_on_deleted_keep_refuses_a_shard_that_is_half_deleted_half_changed(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    job.write_text(job.read_text().replace("shard_rows = 1000", 'shard_rows = 1000\non_deleted = "keep"'))
    (tmp_path / "data" / "a.parquet").unlink()
    _file(tmp_path / "data", "b.parquet", 1_000, 450, seed=11)
    with pytest.raises(InputError, match="share a shard") as info:
        infermill.run(job, progress="off")
    assert "--full" in (info.value.hint or "")
    result = infermill.run(job, progress="off", full=True)
    assert _output(tmp_path).equals(_scratch(tmp_path / "data", tmp_path / "scratch"))
    assert result.rows_this_run == 450 + 1_500


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_formats_add_change_delete(tmp_path: Path, fmt: str) -> None:
    """CSV and JSONL files are cut into byte ranges and small files merge: the same rules hold."""
    import pyarrow.csv as pacsv

    def write(name: str, start: int, rows: int, seed: int) -> None:
        path = tmp_path / "data" / f"{name}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        existed = path.exists()
        table = make_table(rows, seed=seed, start_id=start)
        if fmt == "csv":
            pacsv.write_csv(table, path)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
        if existed:
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    write("a", 0, 300, 0)
    write("b", 1_000, 300, 1)
    write("c", 2_000, 300, 2)
    extra = f'format = "{fmt}"\nshard_bytes = 40000'
    job = _job(tmp_path, extra=extra)
    infermill.run(job, progress="off")
    write("d", 5_000, 300, 3)
    write("b", 1_000, 350, 11)
    (tmp_path / "data" / f"c.{fmt}").unlink()
    result = infermill.run(job, progress="off")
    assert result.input_changes is not None
    assert (result.input_changes.added, result.input_changes.changed, result.input_changes.deleted) == (
        (f"d.{fmt}",), (f"b.{fmt}",), (f"c.{fmt}",)
    )
    shutil.copytree(tmp_path / "data", tmp_path / "scratch" / "data")
    scratch = _job(tmp_path / "scratch", extra=extra)
    infermill.run(scratch, progress="off")
    assert _output(tmp_path).equals(read_output(tmp_path / "scratch" / "out").sort_by("customer_id"))
    assert _output(tmp_path).num_rows == 950


FLAKY = SCORER.replace(
    "    def predict(self, batch):\n",
    "    def predict(self, batch):\n"
    "        import os\n"
    "        if not os.environ.get('FLAKY_FIXED') and (batch['f0'] > 2.0).any():\n"
    "            raise RuntimeError('boom')\n",
)


def test_retry_after_an_incremental_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an incremental run the ledger's shards are numbered as the rounds made them ([c2] and [d],
    where planning afresh would make [c2, d]): retry takes them from the stored plan, not a new one."""
    data = tmp_path / "data"
    _file(data, "a.parquet", 0, 400)
    _file(data, "b.parquet", 1_000, 400, seed=1)
    _file(data, "c.parquet", 2_000, 1_500, seed=2)
    job = _job(tmp_path)
    (tmp_path / "scorer.py").write_text(FLAKY)
    infermill.run(job, progress="off")
    _file(data, "d.parquet", 5_000, 300, seed=3)
    result = infermill.run(job, progress="off")
    assert result.shards_total == 4 and result.rows_failed > 0
    monkeypatch.setenv("FLAKY_FIXED", "1")
    fixed = infermill.retry(job)
    assert (fixed.rows_succeeded, fixed.rows_failed) == (2_600, 0)
    assert _output(tmp_path).equals(_scratch(data, tmp_path / "scratch"))


def test_full_recomputes_everything(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    _file(tmp_path / "data", "d.parquet", 5_000, 300, seed=3)
    result = infermill.run(job, progress="off", full=True)
    assert result.rows_this_run == 2_600 and result.input_changes is None
    assert _output(tmp_path).equals(_scratch(tmp_path / "data", tmp_path / "scratch"))


def test_a_changed_spec_is_still_refused(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    _file(tmp_path / "data", "d.parquet", 5_000, 300, seed=3)
    job.write_text(job.read_text().replace("size = 250", "size = 250\nmax_bytes = 100000000"))
    with pytest.raises(JobChangedError, match="the job spec and the input files changed"):
        infermill.run(job, progress="off")


def test_report_lines_come_before_the_work(tmp_path: Path) -> None:
    job = _round0(tmp_path)
    _file(tmp_path / "data", "d.parquet", 5_000, 300, seed=3)
    _file(tmp_path / "data", "e.parquet", 6_000, 300, seed=4)
    _file(tmp_path / "data", "b.parquet", 1_000, 450, seed=11)
    (tmp_path / "data" / "c.parquet").unlink()
    proc = _cli_run(job, "--progress", "log")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    added = lines.index(
        "[inc] input: 2 files (d.parquet, e.parquet) added since the last run: their rows will be scored"
    )
    assert lines[added + 1] == (
        "[inc] input: 1 file (b.parquet) changed since the last run: their rows will be recomputed"
    )
    assert lines[added + 2] == "[inc] input: 1 file (c.parquet) deleted since the last run: their rows leave the output"
    assert lines[added + 3] == "[inc] plan: 0 shards kept, 3 removed, 2 new"
    assert not any("rows/s" in line for line in lines[:added]) and "rows/s" in lines[added + 4]  # before the work
    assert "  input:    2 files added, 1 changed, 1 deleted (rows removed)" in proc.stdout.splitlines()
    quiet = _cli_run(job, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_three_rounds_with_a_kill_each_equal_a_run_from_scratch(tmp_path: Path, ledger_url: str | None) -> None:
    """Add, change and delete files over three rounds; each round's run is SIGKILLed once (at a commit
    step, or just after the plan changed) and resumed: the output equals a run from scratch every time.
    With the SQLite ledger and a PostgreSQL one."""
    job = _round0(tmp_path, ledger_url)
    data = tmp_path / "data"

    def round_(number: int, fault: str) -> None:
        killed = _cli_run(job, "--quiet", fault=fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr)
        resumed = _cli_run(job, "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        assert _output(tmp_path).equals(_scratch(data, tmp_path / f"scratch{number}"))
        assert not (tmp_path / "out" / "_staging").exists()

    # 1: two files added; killed after the first new shard's ledger commit.
    _file(data, "d.parquet", 5_000, 700, seed=3)
    _file(data, "e.parquet", 6_000, 1_200, seed=4)
    round_(1, "after_commit:1")
    # 2: b changed (a shares its shard), f added; killed right after the ledger took the new plan.
    _file(data, "b.parquet", 1_000, 450, seed=11)
    _file(data, "f.parquet", 8_000, 100, seed=5)
    round_(2, "after_replan:1")
    # 3: c deleted, d changed; killed between a part's rename and its ledger commit.
    (data / "c.parquet").unlink()
    _file(data, "d.parquet", 5_000, 900, seed=13)
    round_(3, "after_rename:1")
    # 3b: only deletions (no shard to run): killed before the manifest that drops e's rows.
    (data / "e.parquet").unlink()
    round_(4, "before_manifest:1")


def test_path_template_with_param_and_default_date(tmp_path: Path) -> None:
    from infermill.templates import today

    for day, start in (("2025-01-01", 0), ("2025-01-02", 10_000), (today("UTC"), 20_000)):
        _file(tmp_path / "data" / day, "part-0.parquet", start, 300, seed=start)
    job = _job(tmp_path, path="data/{date}/*.parquet", extra='on_deleted = "keep"')
    spec = load_spec(job, params={"date": "2025-01-01"})
    assert spec.input.path == "data/2025-01-01/*.parquet" and spec.input_template == "data/{date}/*.parquet"
    first = infermill.run(spec, progress="off")
    assert first.rows_succeeded == 300
    # The next day: the same file name in another partition is a new file, not a changed one.
    proc = run_cli("run", str(job), "--param", "date=2025-01-02", "--progress", "log")
    assert proc.returncode == 0, proc.stderr
    assert "input: 1 file (2025-01-02/part-0.parquet) added since the last run" in proc.stderr
    assert "1 file (2025-01-01/part-0.parquet) deleted since the last run: their rows stay" in proc.stderr
    # No --param: today in the job's timezone.
    proc = run_cli("run", str(job), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _output(tmp_path).column("customer_id").to_pylist() == [
        *range(300), *range(10_000, 10_300), *range(20_000, 20_300)
    ]
    status = run_cli("status", str(job), "--param", "date=2025-01-02", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "complete"
    assert run_cli("validate", str(job), "--param", "date=2025-01-02").returncode == 0


def test_path_template_refuses_unknown_placeholders_and_params(tmp_path: Path) -> None:
    job = _job(tmp_path, path="data/{region}/{date}/*.parquet")
    with pytest.raises(SpecError, match=r"placeholder \{region\}, which has no value") as info:
        load_spec(job)
    assert "--param region=VALUE" in (info.value.hint or "")
    with pytest.raises(SpecError, match="--param dat names no placeholder"):
        load_spec(job, params={"region": "eu", "dat": "2026-12-01"})
    proc = run_cli("run", str(job), "--param", "region=eu", "--param", "day=1")
    assert proc.returncode == 2 and "--param day names no placeholder" in proc.stderr
    proc = run_cli("validate", str(job), "--param", "region")
    assert proc.returncode == 2 and "is not NAME=VALUE" in proc.stderr
    bad = _job(tmp_path, path="data/{date:%Y}/*.parquet")
    with pytest.raises(SpecError, match="not a plain name"):
        load_spec(bad)
    zone = _job(tmp_path, path="data/{date}/*.parquet")
    zone.write_text(zone.read_text() + '[runtime]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(SpecError, match="unknown 'runtime.timezone'"):
        load_spec(zone)
