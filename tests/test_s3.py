"""Object storage end to end: Parquet input and output on an S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.spec import JobSpec
from infermill.testing.sinks import SinkConformance, sink_spec
from tests.conftest import SCORER, expected_score, make_table

pytestmark = pytest.mark.s3

SECRET = "s3cr3t-value-never-logged"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, dict[str, object]]]:
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options: dict[str, object] = {"endpoint_url": s3_endpoint, "key": "testing", "secret": SECRET}
    fs = s3fs.S3FileSystem(**options)
    name = f"bucket-{os.getpid()}-{time.monotonic_ns()}"
    fs.mkdir(name)
    yield fs, {"name": name, "options": options}


def test_parquet_from_s3_to_s3(bucket, tmp_path: Path) -> None:
    fs, info = bucket
    name, options = info["name"], info["options"]
    table = make_table(6_000)
    for i in range(3):
        with fs.open(f"{name}/in/part-{i}.parquet", "wb") as fh:
            pq.write_table(table.slice(i * 2_000, 2_000), fh, row_group_size=500)
    (tmp_path / "scorer.py").write_text(SCORER)
    toml_options = ", ".join(f'{k} = "{v}"' for k, v in options.items())
    (tmp_path / "job.toml").write_text(f"""
name = "s3job"
[input]
path = "s3://{name}/in/"
format = "parquet"
id_column = "customer_id"
shard_rows = 1000
storage_options = {{ {toml_options} }}
[model]
kind = "python"
entrypoint = "scorer.py:Scorer"
features = ["f0", "f1", "f2"]
outputs = ["score"]
[output]
path = "s3://{name}/out/"
storage_options = {{ {toml_options} }}
""")
    result = infermill.run(tmp_path / "job.toml", progress="off")
    assert (result.state, result.rows_succeeded, result.shards_committed) == ("complete", 6_000, 6)
    manifest = json.loads(fs.cat(f"{name}/out/_manifest.json"))
    assert [f["path"] for f in manifest["files"]] == [f"part-{i:05d}-a1.parquet" for i in range(6)]
    assert all(f["sha256"] == hashlib.sha256(fs.cat(f"{name}/out/{f['path']}")).hexdigest() for f in manifest["files"])
    out = pq.read_table(f"{name}/out/", filesystem=fs).sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(6_000))
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(table))
    # Rerun: nothing to do; the credentials never show up in what infermill wrote or said.
    assert infermill.run(tmp_path / "job.toml", progress="off").message.startswith("nothing to do")
    status = json.dumps(infermill.status(tmp_path / "job.toml"))
    ledger = (tmp_path / ".infermill" / "s3job.sqlite").read_bytes()
    assert SECRET not in status and SECRET.encode() not in ledger


def test_missing_s3_input_is_a_clear_error(bucket, tmp_path: Path) -> None:
    _, info = bucket
    (tmp_path / "scorer.py").write_text(SCORER)
    spec = infermill.JobSpec(
        input=infermill.InputSpec(path=f"s3://{info['name']}/nothing/*.parquet", storage_options=info["options"]),
        model=infermill.ModelSpec(kind="python", entrypoint="scorer.py:Scorer"),
        output=infermill.OutputSpec(path=str(tmp_path / "out")),
        base_dir=str(tmp_path),
    )
    with pytest.raises(infermill.InputError) as err:
        infermill.run(spec, progress="off")
    assert SECRET not in str(err.value)


class TestParquetSinkOnS3(SinkConformance):
    """The sink contract on S3 (moto): staged results are objects under the output's _staging/ prefix, and
    the coordinator commits them by a move on the store, without the worker's disk."""

    @pytest.fixture(autouse=True)
    def _bucket(self, bucket: tuple[Any, dict[str, Any]]) -> None:
        self.fs, self.info = bucket

    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, f"s3://{self.info['name']}/{tmp_path.name}/out", format="parquet",
                         storage_options=self.info["options"])

    def exists(self, location: str) -> bool:
        return bool(self.fs.exists(location))
