"""The Dagster integration's parts that need no Dagster (these run in the main suite): infermill never
imports dagster by itself, ``--dagster-pipes`` without the package is refused with a hint, and the
``error_budget`` check follows the engine's rule."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from infermill.integrations.dagster_pipes import budget_check, launched_by_pipes, materialization_metadata
from tests.conftest import run_cli


def test_infermill_imports_no_dagster() -> None:
    code = (
        "import sys, infermill, infermill.cli, infermill.integrations.dagster_pipes; "
        "print(sorted(m for m in ('dagster', 'dagster_pipes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("dagster_pipes") is not None, reason="dagster-pipes is installed")
def test_dagster_pipes_without_the_package_is_refused(
    parquet_job: Callable[..., tuple[Path, pa.Table]], tmp_path: Path
) -> None:
    job, _ = parquet_job(rows=1_000, files=1)
    proc = run_cli("run", str(job), "--dagster-pipes", "-q", "--summary-json", str(tmp_path / "summary.json"))
    assert proc.returncode == 2, proc.stderr
    assert "dagster-pipes package is not installed" in proc.stderr
    assert "pip install 'infermill[dagster-pipes]'" in proc.stderr
    assert not (tmp_path / "out" / "_manifest.json").exists()  # nothing ran
    summary = json.loads((tmp_path / "summary.json").read_text())  # written whatever the outcome
    assert summary["state"] == "invalid" and summary["exit_code"] == 2 and summary["retry"] is False
    assert summary["error"]["class"] == "SpecError"


def test_pipes_is_detected_from_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    monkeypatch.delenv("DAGSTER_PIPES_MESSAGES", raising=False)
    assert not launched_by_pipes() and launched_by_pipes(True)
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "x")
    assert not launched_by_pipes()
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", "y")
    assert launched_by_pipes()


@pytest.mark.parametrize(
    ("failed", "succeeded", "max_rows", "max_fraction", "passed"),
    [
        (0, 100, None, None, True),
        (100, 0, None, None, False),  # no budget: only a job where every row failed is over
        (10, 90, 10, None, True),  # "more than max_failed_rows" is over, as in the engine
        (11, 89, 10, None, False),
        (10, 90, None, 0.1, True),
        (11, 89, None, 0.1, False),
    ],
)
def test_budget_check_follows_the_engine_rule(
    failed: int, succeeded: int, max_rows: int | None, max_fraction: float | None, passed: bool
) -> None:
    summary = {"rows_failed": failed, "rows_succeeded": succeeded, "rows_total": failed + succeeded}
    ok, meta = budget_check(summary, max_rows, max_fraction)
    assert ok is passed
    assert meta["rows_failed"] == failed and meta["rows_total"] == failed + succeeded


def test_metadata_has_dead_letters_by_class_and_no_nulls() -> None:
    summary = {"state": "complete", "rows_total": 10, "rows_succeeded": 7, "rows_failed": 3, "rows_this_run": 10,
               "dead_letters": {"ValueError": 2, "KeyError": 1}, "output": "/o", "manifest": None, "run_id": None}
    meta = materialization_metadata(summary)
    assert meta["dead_letters"] == {"raw_value": {"ValueError": 2, "KeyError": 1}, "type": "json"}
    assert meta["dead_letters/ValueError"] == 2 and meta["dead_letters_total"] == 3
    assert meta["output"] == {"raw_value": "/o", "type": "path"}
    assert "manifest" not in meta and "run_id" not in meta
