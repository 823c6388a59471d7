"""`infermill serve` and `infermill runs` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_serve_refuses_a_job_without_a_schedule(parquet_job) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=1_000, files=1)
    proc = run_cli("serve", str(job))
    assert proc.returncode == 2
    assert "has no [schedule]: serve has nothing to do for it" in proc.stderr
    assert 'cron = "0 2 * * *"' in proc.stderr


def test_runs_lists_a_manual_run(parquet_job, job_dir: Path) -> None:  # type: ignore[no-untyped-def]
    job, _ = parquet_job(rows=1_000, files=1)
    assert run_cli("runs", str(job)).stdout.strip().endswith("no runs yet")
    assert run_cli("run", str(job), "-q").returncode == 0
    listed = json.loads(run_cli("runs", str(job), "--json").stdout)
    assert [(e["run_id"], e["state"], e["trigger"], e["rows_done"]) for e in listed] == [
        (1, "complete", "manual", 1_000)]
    table = run_cli("runs", str(job)).stdout.splitlines()
    assert table[0].split()[:4] == ["RUN", "STARTED", "STATE", "TRIGGER"]
    assert table[1].split()[0] == "1" and "complete" in table[1] and "manual" in table[1]
