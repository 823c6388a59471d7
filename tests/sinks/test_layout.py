"""Output layout (issue #15): ``target_file_mb`` (several parts per shard) and ``partition_by`` (Hive-style
folders), a shard's files committed together through one index; the sink contract, runs, verify, status,
retry and crash recovery with a set of files per shard."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import SpecError
from infermill.sinks import OwnerRecord, open_sink
from infermill.spec import JobSpec
from infermill.testing.sinks import SinkConformance, sink_spec
from tests.conftest import SCORER, expected_score, run_cli, write_job, write_parquet_files


class TestArrowSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="arrow")


class _Countries:
    def rows(self, start: int = 0, count: int = 10) -> pa.Table:
        return pa.table({"_row_id": [f"r{i}" for i in range(start, start + count)],
                         "country": [["DE", "FR", "US"][i % 3] for i in range(start, start + count)],
                         "score": [float(i) for i in range(start, start + count)]})


class TestPartitionedParquetSink(_Countries, SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="parquet", partition_by=["country"], target_file_mb=0.0005)


class TestPartitionedArrowSinkOnAnObjectStore(_Countries, SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        bucket = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
        return sink_spec(tmp_path, f"memory://layout-{bucket}/out", format="arrow", partition_by=["country"])


def _sink(tmp_path: Path, **options: object):  # type: ignore[no-untyped-def]
    sink = open_sink(sink_spec(tmp_path, "out", format="parquet", **options))
    sink.claim(OwnerRecord("conformance", "uid-1", str(tmp_path / "ledger")))
    sink.prepare()
    return sink


def test_a_crash_between_a_sets_files_and_its_index_leaves_only_debris_that_recover_removes(tmp_path: Path) -> None:
    sink = _sink(tmp_path, partition_by=["country"])
    writer = sink.open_writer(0)
    writer.write(_Countries().rows(0, 30))
    staged = writer.close()
    assert len(staged.members) == 3
    # The commit moved the files, then died before the index: what a kill -9 there leaves.
    for member in staged.members:
        target = tmp_path / "out" / member.final_name.replace(".parquet", "-a1.parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(member.location, target)
    assert sorted(sink.list_parts()) == [
        f"country={c}/part-00000-000{i}-a1.parquet" for i, c in ((1, "DE"), (2, "FR"), (3, "US"))
    ]
    kept = sink.commit(_stage(sink, 1), 2)
    assert kept is not None
    assert sorted(sink.recover({kept.name})) == [
        f"country={c}/part-00000-000{i}-a1.parquet" for i, c in ((1, "DE"), (2, "FR"), (3, "US"))
    ]
    assert sink.list_parts() == [kept.name]
    assert sorted(p.name for p in (tmp_path / "out").glob("country=*/*")) == sorted(
        m.name.rsplit("/", 1)[1] for m in sink.members(kept.name)
    )


def _stage(sink, ordinal: int):  # type: ignore[no-untyped-def]
    writer = sink.open_writer(ordinal)
    writer.write(_Countries().rows(100 * ordinal, 12))
    return writer.close()


def test_removing_a_set_removes_its_files_and_empty_folders(tmp_path: Path) -> None:
    sink = _sink(tmp_path, partition_by=["country"])
    committed = sink.commit(_stage(sink, 0), 1)
    assert committed is not None and len(sink.members(committed.name)) == 3
    sink.remove([committed.name])
    assert sorted(os.listdir(tmp_path / "out")) == ["_infermill.json", "_staging"]  # staging: made by prepare


def test_bad_layout_settings_are_refused_when_the_spec_is_built(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="target_file_mb"):
        sink_spec(tmp_path, "out", format="parquet", target_file_mb=0).output_settings()
    with pytest.raises(SpecError, match="partition_by"):
        sink_spec(tmp_path, "out", format="arrow", partition_by=["a", "a"]).output_settings()


def test_partition_by_a_column_that_is_not_a_result_is_refused_by_validate(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, 'partition_by = ["f0"]')
    result = run_cli("validate", str(job))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'output.partition_by' names 'f0', which is not a result column" in result.stderr
    assert 'keep = ["f0"]' in result.stderr


JOB = """
name = "layout"
[input]
path = "data/"
id_column = "customer_id"
shard_rows = {shard_rows}
[model]
kind = "python"
entrypoint = "scorer.py:Scorer"
features = ["f0", "f1", "f2"]
outputs = ["score"]
[batch]
size = 500
[output]
path = "out"
format = "{fmt}"
keep = ["segment"]
{layout}
"""


def _job(tmp_path: Path, layout: str, *, rows: int = 20_000, shard_rows: int = 5_000, fmt: str = "parquet",
         scorer: str = SCORER) -> tuple[Path, pa.Table]:
    table = write_parquet_files(tmp_path / "data", rows, files=2, row_group_size=1_000)
    (tmp_path / "scorer.py").write_text(scorer)
    job = write_job(tmp_path / "job.toml", JOB.format(shard_rows=shard_rows, fmt=fmt, layout=layout))
    return job, table


def _manifest(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "_manifest.json").read_text())
    return data


def _files_on_disk(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("part-*") if not p.parts[-2].startswith("_"))


def _read_dataset(out: Path, fmt: str = "parquet") -> pa.Table:
    """The output as a downstream reader sees the folder (Hive partitions, ``_`` folders skipped)."""
    return ds.dataset(str(out), format="ipc" if fmt == "arrow" else fmt, partitioning="hive").to_table()


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_target_file_mb_writes_several_parts_per_shard_whose_union_is_the_input(tmp_path: Path, fmt: str) -> None:
    target = 0.01 * 2**20  # a shard's result is ~100 KiB (id, segment, score)
    job, table = _job(tmp_path, "target_file_mb = 0.01", fmt=fmt)
    result = infermill.run(job, progress="off")
    assert result.state == "complete", result.message
    out = tmp_path / "out"
    files = _files_on_disk(out)
    per_shard = {s: [f for f in files if f.startswith(f"part-{s:05d}-")] for s in range(4)}
    assert all(len(names) >= 5 for names in per_shard.values()), per_shard
    for names in per_shard.values():
        for name in names[:-1]:  # all but a shard's last part are about the target
            assert 0.4 * target < (out / name).stat().st_size < 1.6 * target, name
    manifest = _manifest(out)
    assert sorted(f["path"] for f in manifest["files"]) == files  # type: ignore[attr-defined]
    assert manifest["rows_total"] == 20_000
    got = _read_dataset(out, fmt).sort_by("customer_id")
    assert got.column("customer_id").to_pylist() == table.column("customer_id").to_pylist()
    assert got.column("score").to_pylist() == pytest.approx(list(expected_score(table)))
    assert infermill.verify(job).intact


def test_partition_by_writes_hive_folders_and_the_manifest_lists_every_file(tmp_path: Path) -> None:
    job, table = _job(tmp_path, 'partition_by = ["segment"]')
    result = infermill.run(job, progress="off")
    assert result.state == "complete", result.message
    out = tmp_path / "out"
    files = _files_on_disk(out)
    assert {f.split("/")[0] for f in files} == {"segment=a", "segment=b", "segment=c"}
    assert len(files) == 4 * 3  # a file per shard and value
    manifest = _manifest(out)
    entries = manifest["files"]
    assert sorted(f["path"] for f in entries) == files  # type: ignore[attr-defined]
    for entry in entries:  # type: ignore[attr-defined]
        path = out / entry["path"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        written = pq.read_table(path)
        assert entry["rows"] == written.num_rows
        assert set(written.column("segment").to_pylist()) == {entry["path"].split("/")[0].split("=")[1]}
    got = _read_dataset(out).sort_by("customer_id")
    assert got.num_rows == 20_000 and got.column("customer_id").to_pylist() == list(range(20_000))
    assert got.column("segment").equals(table.column("segment"))
    status = json.loads(run_cli("status", str(job), "--json").stdout)
    assert status["state"] == "complete"
    assert run_cli("verify", str(job)).returncode == 0


def test_verify_and_a_rerun_catch_a_damaged_file_in_a_partition_folder(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, 'partition_by = ["segment"]')
    infermill.run(job, progress="off")
    out = tmp_path / "out"
    victim = sorted(out.glob("segment=b/part-00002-*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only a checksum can tell
    report = infermill.verify(job)
    assert not report.intact
    assert [(p.name, p.problem) for p in report.problems] == [(f"segment=b/{victim.name}", "checksum")]
    assert run_cli("verify", str(job)).returncode == 1
    # A rerun's quick look hashes a file changed after its index was written, and redoes only its shard.
    os.utime(victim, None)
    status = json.loads(run_cli("status", str(job), "--json").stdout)
    assert status["state"] == "damaged" and f"segment=b/{victim.name}" in status["damaged_parts"][0]
    result = infermill.run(job, progress="off")
    assert result.rows_this_run == 5_000
    assert not victim.exists()  # the old attempt's files went with its index
    got = _read_dataset(out).sort_by("customer_id")
    assert got.column("customer_id").to_pylist() == list(range(20_000))
    assert infermill.verify(job).intact


def test_a_missing_file_of_a_set_is_noticed_and_its_shard_recomputed(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, 'partition_by = ["segment"]\ntarget_file_mb = 0.02')
    infermill.run(job, progress="off")
    out = tmp_path / "out"
    victim = sorted(out.glob("segment=a/part-00001-*.parquet"))[-1]
    victim.unlink()
    report = infermill.verify(job)
    assert [(p.name, p.problem) for p in report.problems] == [(f"segment=a/{victim.name}", "missing")]
    result = infermill.run(job, progress="off")
    assert result.rows_this_run == 5_000
    assert _read_dataset(out).sort_by("customer_id").column("customer_id").to_pylist() == list(range(20_000))
    assert infermill.verify(job).intact


FAILING = SCORER.replace(
    "    def predict(self, batch):\n",
    "    def predict(self, batch):\n"
    "        import os\n"
    "        if os.environ.get('FAIL_SOME') and any(int(i) % 97 == 0 for i in batch['customer_id']):\n"
    "            raise ValueError('bad row')\n",
)


def test_retry_rewrites_a_partitioned_shard_as_a_new_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, table = _job(tmp_path, 'partition_by = ["segment"]\n[errors]\nmax_failed_fraction = 1.0',
                      scorer=FAILING, rows=4_000, shard_rows=2_000)
    features = 'features = ["f0", "f1", "f2", "customer_id"]'  # the model fails the batches of some ids
    job.write_text(job.read_text().replace('features = ["f0", "f1", "f2"]', features))
    monkeypatch.setenv("FAIL_SOME", "1")
    first = infermill.run(job, progress="off")
    assert first.rows_failed > 0
    monkeypatch.delenv("FAIL_SOME")
    result = run_cli("retry", str(job))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    got = _read_dataset(out).sort_by("customer_id")
    assert got.column("customer_id").to_pylist() == list(range(4_000))
    assert got.column("score").to_pylist() == pytest.approx(list(expected_score(table)))
    assert infermill.verify(job).intact
    on_disk = _files_on_disk(out)
    assert sorted(f["path"] for f in _manifest(out)["files"]) == on_disk  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_rename", "after_commit"])
def test_kill_between_commits_then_resume_leaves_one_copy_of_each_row(tmp_path: Path, point: str) -> None:
    job, table = _job(tmp_path, 'partition_by = ["segment"]\ntarget_file_mb = 0.03', shard_rows=2_000)
    out = tmp_path / "out"
    for nth in (2, 5):
        proc = subprocess.run(
            [sys.executable, "-m", "infermill", "run", str(job), "-q"], capture_output=True, timeout=300,
            env={**os.environ, "INFERMILL_FAULT": f"{point}:{nth}"},
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        ids = _read_dataset(out).column("customer_id")
        assert len(pc.unique(ids)) == len(ids), "a row is in the output twice"
    final = run_cli("run", str(job), "-q", timeout=300)
    assert final.returncode == 0, final.stderr
    got = _read_dataset(out).sort_by("customer_id")
    assert got.column("customer_id").to_pylist() == list(range(20_000))
    assert got.column("score").to_pylist() == pytest.approx(list(expected_score(table)))
    assert sorted(f["path"] for f in _manifest(out)["files"]) == _files_on_disk(out)  # type: ignore[attr-defined]
    assert not (out / "_staging").exists()
    assert infermill.verify(job).intact
