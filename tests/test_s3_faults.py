"""Object storage under faults: Parquet in and out of moto's S3 server through a proxy that answers 503
SlowDown, cuts a response in mid-body, or drops the answer to a PUT it forwarded.

The store client's own retries are turned down (s3fs ``retries = 1``; botocore ``total_max_attempts = 1``,
in the job's storage options as a user could set it) and each fault repeats three times in a row, so what survives
is infermill's retrying (``infermill.store``), not the client's. Every run must end with the output of a
clean run: the same rows and scores, a manifest whose checksums match the objects, and no other key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import StorageError
from infermill.testing.faulty_proxy import Fault, FaultyProxy
from tests.conftest import SCORER, expected_score, make_table, toml_value
from tests.test_s3 import SECRET, bucket, s3_endpoint  # noqa: F401 - fixtures

pytestmark = pytest.mark.s3

ROWS, FILES, SHARD_ROWS = 6_000, 3, 1_000
SHARDS = ROWS // SHARD_ROWS


@dataclass
class Store:
    fs: Any
    """s3fs straight to moto (the test's own view: no faults)."""
    name: str
    proxy: FaultyProxy
    table: pa.Table


@pytest.fixture
def store(bucket: tuple[Any, dict[str, Any]], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:  # noqa: F811
    import s3fs

    fs, info = bucket
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr(s3fs.core.S3File, "retries", 1)
    table = make_table(ROWS)
    per_file = ROWS // FILES
    for i in range(FILES):
        with fs.open(f"{info['name']}/in/part-{i}.parquet", "wb") as fh:
            pq.write_table(table.slice(i * per_file, per_file), fh, row_group_size=500)
    with FaultyProxy(s3_endpoint) as proxy:
        yield Store(fs, info["name"], proxy, table)


def _job(tmp_path: Path, store: Store) -> Path:
    options = {
        "endpoint_url": store.proxy.url, "key": "testing", "secret": SECRET,
        "config_kwargs": {"retries": {"total_max_attempts": 1}},
    }
    (tmp_path / "scorer.py").write_text(SCORER)
    job = tmp_path / "job.toml"
    job.write_text(f"""
name = "faults"
[input]
path = "s3://{store.name}/in/"
format = "parquet"
id_column = "customer_id"
shard_rows = {SHARD_ROWS}
storage_options = {toml_value(options)}
[model]
kind = "python"
entrypoint = "scorer.py:Scorer"
features = ["f0", "f1", "f2"]
outputs = ["score"]
[output]
path = "s3://{store.name}/out/"
storage_options = {toml_value(options)}
""")
    return job


def _check_output(store: Store, attempts: dict[int, int] | None = None) -> None:
    """The output equals a clean run's: every row once with its score, the manifest lists exactly the
    objects under the output (each with its checksum), and nothing else is there. ``attempts``: the
    attempt each shard was committed by, where not the first (None: any of the first two)."""
    fs, root = store.fs, f"{store.name}/out"
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{root}/_manifest.json"))
    names = [f["path"] for f in manifest["files"]]
    if attempts is None:
        assert all(re.fullmatch(rf"part-{i:05d}-a[12]\.parquet", n) for i, n in enumerate(names)), names
    else:
        assert names == [f"part-{i:05d}-a{attempts.get(i, 1)}.parquet" for i in range(SHARDS)]
    assert manifest["rows_total"] == ROWS and manifest["error_files"] == []
    for entry in manifest["files"]:
        data = fs.cat(f"{root}/{entry['path']}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    keys = sorted(p[len(root) + 1 :] for p in fs.find(root))
    assert keys == sorted([*names, "_infermill.json", "_manifest.json"])  # no orphan, no staging key
    out = pa.concat_tables(pq.read_table(fs.open(f"{root}/{n}", "rb")) for n in names).sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(store.table))


FAULTS = {
    "listing answered 503 SlowDown": Fault("slowdown", method="GET", path=r"list-type=2", times=3),
    "input read answered 503 SlowDown": Fault("slowdown", method="GET", path=r"/in/part-1\.parquet", nth=2, times=3),
    "input read cut in mid-body": Fault("reset_body", method="GET", path=r"/in/part-2\.parquet", nth=2, times=3),
    "input read answered 500": Fault("status", method="GET", path=r"/in/part-0\.parquet", status=500, times=3),
    "output upload done, answer lost": Fault("drop_response", method="PUT", path=r"/out/part-00002-a1", times=3),
    "output upload answered 503": Fault("slowdown", method="PUT", path=r"/out/part-00004-a1", times=3),
    "commit check connection reset": Fault("reset", method="HEAD", path=r"/out/part-00001-a1", times=3),
    "manifest upload done, answer lost": Fault("drop_response", method="PUT", path=r"/out/_manifest\.json", times=3),
    "ownership record upload done, answer lost": Fault(
        "drop_response", method="PUT", path=r"/out/_infermill\.json", times=3
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_a_fault_is_retried_and_the_output_is_exact(store: Store, tmp_path: Path, fault: Fault) -> None:
    store.proxy.add(fault)
    result = infermill.run(_job(tmp_path, store), progress="off")
    assert (result.state, result.rows_succeeded, result.shards_committed) == ("complete", ROWS, SHARDS)
    assert len(store.proxy.fired) == 3, store.proxy.fired  # the fault happened, three times in a row
    _check_output(store)


def test_retries_run_out_then_a_rerun_resumes_and_cleans_the_dead_attempts_key(store: Store, tmp_path: Path) -> None:
    """Shard 3 is uploaded, then its commit check fails for good: the run stops with a transient error,
    leaving the uploaded key of an attempt the ledger never committed. The rerun removes it, redoes the
    shard under its own attempt, and the output is exact."""
    job = _job(tmp_path, store)
    store.proxy.add(Fault("slowdown", method="HEAD", path=r"/out/part-00003-a1", times=None))
    with pytest.raises(StorageError) as err:
        infermill.run(job, progress="off")
    assert err.value.transient and "part-00003-a1" in str(err.value) and SECRET not in str(err.value)
    store.fs.invalidate_cache()
    assert store.fs.exists(f"{store.name}/out/part-00003-a1.parquet")  # the dead attempt's key
    assert not store.fs.exists(f"{store.name}/out/_manifest.json")
    store.proxy.clear()
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded, result.shards_committed) == ("complete", ROWS, SHARDS)
    committed = infermill.status(job)["shards_committed"]
    assert committed == SHARDS
    _check_output(store, attempts={i: 2 for i in range(3, SHARDS)})


def test_a_store_that_keeps_throttling_is_a_transient_error(store: Store, tmp_path: Path) -> None:
    store.proxy.add(Fault("slowdown", method="GET", path=r"list-type=2", times=None))
    with pytest.raises(StorageError) as err:
        infermill.run(_job(tmp_path, store), progress="off")
    assert err.value.transient and "SlowDown" not in SECRET and SECRET not in str(err.value)
    assert "rerun" in (err.value.hint or "")


def _with_workers(job: Path, workers: int, out: str) -> None:
    text = job.read_text().replace('/out/"', f'/{out}/"')
    job.write_text(text + f"[runtime]\nworkers = {workers}\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_upload_straight_to_their_keys_and_never_list(store: Store, tmp_path: Path, workers: int) -> None:
    """No rename on object stores: each result is one PUT to its shard's and attempt's key (nothing under
    _staging/, no copy), and the input is listed by the planner alone, however many worker processes."""
    job = _job(tmp_path, store)
    _with_workers(job, workers, "out")
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded) == ("complete", ROWS)
    proxy = store.proxy
    assert proxy.count("PUT", r"_staging") == 0
    assert proxy.count("PUT", r"/out/part-\d{5}-a1\.parquet") == SHARDS
    assert proxy.count("PUT", r"/out/part-") == SHARDS  # no copy: the only PUTs are the uploads
    # Planning lists the input (s3fs: a HEAD of the prefix, one LIST to tell it is a folder, one to list it).
    assert proxy.count("GET", r"list-type=2.*prefix=in") == 2
    _check_output(store)


@pytest.mark.parametrize(
    ("point", "committed"), [("after_stage:3", None), ("before_rename:3", 2), ("after_commit:3", 3)]
)
@pytest.mark.slow
def test_killed_at_a_commit_step_then_resumed(store: Store, tmp_path: Path, point: str, committed: int | None) -> None:
    """SIGKILL of a real run at a step of the commit of shard 2 (its result uploaded to its key, or also
    recorded by the ledger), then a rerun: the dead attempt's key is gone, the shards the ledger had not
    committed are redone under the rerun's attempt, and the output is exact."""
    job = _job(tmp_path, store)
    proc = subprocess.run(
        [sys.executable, "-m", "infermill", "run", str(job), "--quiet"],
        env={**os.environ, "INFERMILL_FAULT": point}, capture_output=True, check=False, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    store.fs.invalidate_cache()
    uploaded = store.fs.exists(f"{store.name}/out/part-00002-a1.parquet")
    assert uploaded  # killed with the result of shard 2 in its final key
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded, result.shards_committed) == ("complete", ROWS, SHARDS)
    # after_stage: the worker is killed with the coordinator's commits of earlier shards in flight.
    _check_output(store, None if committed is None else {i: 2 for i in range(committed, SHARDS)})


def test_jsonl_input_survives_a_read_cut_in_mid_body(store: Store, tmp_path: Path) -> None:
    """Line-oriented input (byte ranges of JSONL objects) reads through the same retrying file."""
    rows = store.table.select(["customer_id", "f0", "f1", "f2"]).to_pylist()
    per_file = ROWS // FILES
    for i in range(FILES):
        text = "".join(json.dumps(r) + "\n" for r in rows[i * per_file : (i + 1) * per_file])
        store.fs.pipe_file(f"{store.name}/lines/part-{i}.jsonl", text.encode())
    job = _job(tmp_path, store)
    job.write_text(job.read_text().replace("/in/", "/lines/").replace('format = "parquet"', 'format = "jsonl"'))
    store.proxy.add(Fault("reset_body", method="GET", path=r"/lines/part-1\.jsonl", times=3))
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded) == ("complete", ROWS)
    assert len(store.proxy.fired) == 3
    fs, root = store.fs, f"{store.name}/out"
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{root}/_manifest.json"))
    out = pa.concat_tables(pq.read_table(fs.open(f"{root}/{f['path']}", "rb")) for f in manifest["files"])
    out = out.sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(store.table))


def test_footers_of_many_objects_are_read_at_once_and_planned_in_order(store: Store, tmp_path: Path) -> None:
    """Planning reads one footer per object, a round trip each: several are in flight at once, and the
    shards are the ones a serial plan of the same files gives (a local copy, planned in turn)."""
    from infermill.sources import open_source

    local = tmp_path / "many"
    local.mkdir()
    for i in range(40):
        pq.write_table(store.table.slice(i * 50, 50 + i), local / f"part-{i:02d}.parquet", row_group_size=30)
        store.fs.put_file(str(local / f"part-{i:02d}.parquet"), f"{store.name}/many/part-{i:02d}.parquet")
    options = {"endpoint_url": store.proxy.url, "key": "testing", "secret": SECRET}

    def plan(path: str, storage: dict[str, Any]) -> list[list[tuple[Any, ...]]]:
        spec = infermill.JobSpec(
            input=infermill.InputSpec(path=path, format="parquet", id_column="customer_id", shard_rows=120,
                                      storage_options=storage),
            model=infermill.ModelSpec(kind="python", entrypoint="scorer.py:Scorer"),
            output=infermill.OutputSpec(path=str(tmp_path / "out")),
            base_dir=str(tmp_path),
        )
        shards = open_source(spec).plan()
        return [[(f.relpath, f.start, f.stop, f.row_offset, f.rows) for f in s.fragments] for s in shards]

    remote = plan(f"s3://{store.name}/many/", options)
    assert store.proxy.max_in_flight > 1
    assert remote == plan(str(local), {})
    assert sum(rows for shard in remote for *_, rows in shard) == sum(50 + i for i in range(40))


def test_a_writer_that_knows_its_attempt_uploads_to_the_key_it_commits(store: Store, tmp_path: Path) -> None:
    """The sink contract on an object store without rename: the upload is the only PUT, the commit checks
    the key and is idempotent, a dead attempt's key is removed by recover, abort removes the key."""
    from infermill.errors import OutputError
    from infermill.sinks import OwnerRecord, open_sink
    from infermill.testing.sinks import sink_spec

    options = {"endpoint_url": store.proxy.url, "key": "testing", "secret": SECRET}
    sink = open_sink(sink_spec(tmp_path, f"s3://{store.name}/direct", format="parquet", storage_options=options))
    assert sink.claim(OwnerRecord("conformance", "uid-1", str(tmp_path / "ledger")))
    sink.prepare()
    rows = pa.table({"_row_id": [f"r{i}" for i in range(10)], "score": [float(i) for i in range(10)]})

    def stage(ordinal: int, attempt: int) -> Any:
        sink.attempt = attempt
        writer = sink.open_writer(ordinal)
        writer.write(rows)
        return writer.close()

    staged = stage(3, 7)
    assert staged.location == f"s3://{store.name}/direct/part-00003-a7.parquet"
    committed, again = sink.commit(staged, 7), sink.commit(staged, 7)
    assert committed is not None and committed == again and committed.name == "part-00003-a7.parquet"
    assert store.proxy.count("PUT", r"/direct/part-") == 1  # the upload; the commit copies nothing
    assert sink.checksum(committed.name) == staged.sha256
    orphan = stage(4, 8)  # its run died before the ledger committed it
    assert sink.recover({committed.name}) == ["part-00004-a8.parquet"]
    assert sink.list_parts() == [committed.name]
    with pytest.raises(OutputError, match="missing or incomplete"):
        sink.commit(orphan, 8)
    dropped = stage(5, 9)
    sink.abort(dropped)
    store.fs.invalidate_cache()
    assert not store.fs.exists(f"{store.name}/direct/part-00005-a9.parquet")
    assert sink.list_parts() == [committed.name]
