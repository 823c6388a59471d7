"""kind = "http": one failing request does not void the answers of its batch. A real server on loopback
fails exactly one prompt (500, always) among many: only that row is dead-lettered, with its own error;
every other answer is written, each good prompt is sent once, and ``infermill retry`` sends only the
failed one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import infermill
from infermill.cli import main
from infermill.testing.http_server import FakeModelServer
from tests.conftest import read_output
from tests.models.http_helpers import http_job

N = 400
BAD = 123


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer(schedule={f"row {BAD}": ["500"]}, lifetime=120.0) as s:
        yield s


def test_one_failing_request_dead_letters_only_its_row(
    tmp_path: Path, server: FakeModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    job = http_job(
        tmp_path,
        server.url,
        N,
        model={"outputs": ["text"], "concurrency": 8, "max_retries": 2, "backoff_seconds": 0.001,
               "max_backoff_seconds": 0.01},
        batch={"size": 200},
        retry={"max_attempts": 3, "backoff_seconds": 0.001, "max_backoff_seconds": 0.01},
    )
    result = infermill.run(job, progress="off")
    assert (result.rows_succeeded, result.rows_failed) == (N - 1, 1)
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.column("id").to_pylist() == [i for i in range(N) if i != BAD]
    assert out.column("text").to_pylist() == [f"echo: row {i}" for i in range(N) if i != BAD]

    errors = pq.read_table(next((tmp_path / "out" / "_errors").rglob("*.parquet"))).to_pylist()
    assert [(e["id"], e["_error_class"], e["_error_kind"]) for e in errors] == [(BAD, "TransientError", "transient")]
    message = errors[0]["_error_message"]
    assert "HTTP 500" in message and "scheduled 500" in message and "(after 3 attempts)" in message
    assert "rows" not in message  # its own error, not a batch summary ("1 of 1 rows sent got no answer")
    capsys.readouterr()
    assert main(["failures", "--json", str(job)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_failed"] == 1

    # Each good prompt reached the server once; the bad one once per request attempt of each engine try.
    counts = [server.count(f"row {i}") for i in range(N)]
    assert [i for i, c in enumerate(counts) if c != 1] == [BAD]
    assert counts[BAD] == (2 + 1) * 3

    # The server is fixed: `infermill retry` sends only the failed prompt, and the output is whole.
    server.schedule[f"row {BAD}"] = ["ok"]
    assert main(["retry", str(job)]) == 0
    assert "1 of 1 dead-lettered items scored" in capsys.readouterr().out
    counts = [server.count(f"row {i}") for i in range(N)]
    assert [i for i, c in enumerate(counts) if c != 1] == [BAD]
    assert counts[BAD] == (2 + 1) * 3 + 1
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.column("text").to_pylist() == [f"echo: row {i}" for i in range(N)]
