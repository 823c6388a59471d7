"""Jobs on a PostgreSQL ledger through the real CLI: run, status, failures, profile, verify, validate,
several jobs in one database, and credentials that never show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import infermill
from infermill.errors import LedgerError, SpecError
from tests.conftest import read_output, run_cli, write_job, write_parquet_files
from tests.postgres import PostgresServer

SECRET = "s3cret-pw"


def _with_password(url: str) -> str:
    # The test server trusts loopback connections: the password is accepted and ignored, as a secret
    # that must never be echoed.
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")


def _job(folder: Path, name: str, ledger: str) -> Path:
    (folder / "scorer.py").write_text(
        "class Scorer:\n    def predict(self, batch):\n        return {'score': batch['f0'] * 2}\n"
    )
    write_parquet_files(folder / "data", 4_000, files=2)
    return write_job(folder / f"{name}.toml", f"""
        name = "{name}"
        [input]
        path = "data/"
        id_column = "customer_id"
        shard_rows = 1000
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["f0"]
        outputs = ["score"]
        [output]
        path = "out-{name}"
        [runtime]
        ledger = "{ledger}"
        """)


@pytest.mark.postgres
def test_jobs_share_a_postgres_ledger_and_never_show_its_password(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = _with_password(postgres_server.create_database())
    first, second = _job(tmp_path, "first", url), _job(tmp_path, "second", url)
    shown: list[str] = []
    for job in (first, second):
        proc = run_cli("run", str(job))
        assert proc.returncode == 0, proc.stderr
        shown += [proc.stdout, proc.stderr]
        again = run_cli("run", str(job))
        assert again.returncode == 0 and "nothing to do" in again.stdout
        for command in (["status", str(job), "--json"], ["failures", str(job)], ["profile", str(job)],
                        ["verify", str(job)], ["validate", str(job)]):
            proc = run_cli(*command)
            assert proc.returncode == 0, (command, proc.stderr)
            shown += [proc.stdout, proc.stderr]
        status = json.loads(run_cli("status", str(job), "--json").stdout)
        assert (status["state"], status["shards_committed"], status["rows_succeeded"]) == ("complete", 4, 4_000)
        assert status["ledger"].startswith("postgresql://postgres:***@127.0.0.1:")  # one masker for every URL
        shown.append((tmp_path / f"out-{job.stem}" / "_infermill.json").read_text())
        assert sorted(read_output(tmp_path / f"out-{job.stem}").column("customer_id").to_pylist()) == list(
            range(4_000))
    assert not [text for text in shown if SECRET in text]
    assert not (tmp_path / ".infermill").exists()  # no SQLite file beside the jobs


@pytest.mark.postgres
def test_an_unreachable_postgres_ledger_is_a_ledger_error_without_the_password(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{postgres_server.port}/no_such_database"
    job = _job(tmp_path, "lost", url)
    with pytest.raises(LedgerError) as info:
        infermill.run(job, progress="off")
    assert SECRET not in str(info.value) and SECRET not in (info.value.hint or "")
    proc = run_cli("run", str(job))
    assert proc.returncode == 1 and "cannot open the ledger postgresql://postgres:***@127.0.0.1:" in proc.stderr
    assert f"psql 'postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database'" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_a_ledger_url_must_name_a_ledger_backend(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="must be a file path \\(SQLite\\) or the URL of a ledger backend") as info:
        _job(tmp_path, "s3", f"s3://user:{SECRET}@bucket/ledger.sqlite")
        infermill.load_spec(tmp_path / "s3.toml")
    assert SECRET not in str(info.value)
