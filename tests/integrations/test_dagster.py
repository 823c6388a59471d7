"""Dagster: a tiny job really run through Dagster's own local runner (``materialize``), offline, both ways:
the ``infermill_asset`` factory (a child ``infermill run``) and Dagster Pipes (``PipesSubprocessClient``
launching ``infermill run``, which reports through Pipes). Cases: success with the summary as metadata and
the budget check, exit 75 once then success on the retry (resumed, output exact), exit 2 (failed, not
retried).

Runs in its own environment (``make test-dagster``: .venv-dagster); skipped where dagster is not installed.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at definition time.

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import SCORER, expected_score, read_output

dg = pytest.importorskip("dagster")
pytest.importorskip("dagster_pipes")

from infermill.integrations.dagster import infermill_asset, run_pipes  # noqa: E402

# Dagster 1.13's own PipesSubprocessClient reads the deprecated context.run_id and calls its own preview
# APIs: warnings raised inside dagster, not by this integration's calls.
pytestmark = [
    pytest.mark.filterwarnings("ignore:AssetExecutionContext.run_id is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::dagster_shared.utils.warnings.PreviewWarning"),
    pytest.mark.filterwarnings("ignore::dagster_shared.utils.warnings.BetaWarning"),
]

ROWS = 4_000

# Sends SIGTERM to its own process (the run: workers = 1 scores on a thread of it) on the third batch of
# the first attempt only: the run drains the shard in flight, commits it and exits 75. The batches after the
# signal in that attempt are slow, as real ones are, so the run stops before it has scored everything.
INTERRUPTING_SCORER = SCORER + '''

import os
import pathlib
import signal
import time

_MARK = pathlib.Path(__file__).with_name("interrupted.mark")


class Interrupting(Scorer):
    calls = 0
    interrupted = False

    def predict(self, batch):
        Interrupting.calls += 1
        if Interrupting.calls == 3 and not _MARK.exists():
            _MARK.write_text("interrupted once")
            Interrupting.interrupted = True
            os.kill(os.getpid(), signal.SIGTERM)
        if Interrupting.interrupted:
            time.sleep(0.5)
        return super().predict(batch)
'''


@pytest.fixture(autouse=True)
def offline_dagster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A throwaway DAGSTER_HOME with telemetry off; nothing leaves the machine."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def job(parquet_job: Callable[..., tuple[Path, pa.Table]]) -> tuple[Path, pa.Table]:
    return parquet_job(rows=ROWS, files=2, shard_rows=1_000, batch=500, workers=1)


def _pipes_asset(job_file: Path, **kwargs: Any) -> dg.AssetsDefinition:
    @dg.asset(name="scores", check_specs=[dg.AssetCheckSpec("error_budget", asset="scores")])
    def scores(
        context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient
    ) -> Iterator[Any]:
        yield from run_pipes(context, job_file, client=pipes_subprocess_client, retry_seconds=0, **kwargs)

    return scores


def _materialize(asset: dg.AssetsDefinition) -> tuple[Any, list[str]]:
    """Materialize ``asset`` with Dagster's in-process runner on an in-memory instance; return the result
    and the run's log messages."""
    with dg.DagsterInstance.ephemeral() as instance:  # disposed: its temporary folder goes with it
        result = dg.materialize(
            [asset], instance=instance, raise_on_error=False,
            resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
        )
        return result, [entry.user_message for entry in instance.all_logs(result.run_id)]


def _events(result: Any, kind: str) -> list[Any]:
    return [e for e in result.all_events if e.event_type_value == kind]


def _assert_output_exact(job_file: Path, table: pa.Table) -> None:
    out = read_output(job_file.parent / "out").sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == list(range(ROWS))  # every row once, none twice
    np.testing.assert_allclose(out.column("score").to_numpy(), expected_score(table))


def _factory(job_file: Path) -> dg.AssetsDefinition:
    return infermill_asset(job_file, name="scores", retry_seconds=0)


def _pipes(job_file: Path) -> dg.AssetsDefinition:
    return _pipes_asset(job_file)


WAYS = pytest.mark.parametrize("make_asset", [_factory, _pipes], ids=["asset", "pipes"])


@WAYS
def test_success_attaches_summary_and_budget_check(
    job: tuple[Path, pa.Table], make_asset: Callable[[Path], dg.AssetsDefinition]
) -> None:
    job_file, table = job
    result, _ = _materialize(make_asset(job_file))

    assert result.success
    (mat,) = result.asset_materializations_for_node("scores")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["state"] == "complete"
    assert meta["rows_succeeded"] == ROWS and meta["rows_failed"] == 0 and meta["rows_this_run"] == ROWS
    assert meta["dead_letters"] == {} and meta["dead_letters_total"] == 0
    out = job_file.parent / "out"
    assert Path(meta["output"]).resolve() == out.resolve()
    assert Path(meta["manifest"]).resolve() == (out / "_manifest.json").resolve()
    assert json.loads((out / "_manifest.json").read_text())["files"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "error_budget" and check.passed
    assert check.metadata["rows_failed"].value == 0
    _assert_output_exact(job_file, table)


def test_pipes_reports_progress_from_the_launched_run(job: tuple[Path, pa.Table]) -> None:
    """A plain ``infermill run JOB`` launched by PipesSubprocessClient detects Pipes by itself."""
    job_file, _ = job

    @dg.asset(name="scores", check_specs=[dg.AssetCheckSpec("error_budget", asset="scores")])
    def scores(
        context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient
    ) -> dg.MaterializeResult:
        import sys

        return pipes_subprocess_client.run(
            command=[sys.executable, "-m", "infermill", "run", str(job_file)], context=context,
        ).get_materialize_result()

    result, messages = _materialize(scores)

    assert result.success
    assert sum("committed" in m and "infermill: shard" in m for m in messages) == ROWS // 1_000
    assert any("infermill: run 1 complete" in m for m in messages)
    (mat,) = result.asset_materializations_for_node("scores")
    assert mat.metadata["rows_succeeded"].value == ROWS
    (check,) = result.get_asset_check_evaluations()
    assert check.passed


@WAYS
def test_exit_75_is_retried_and_the_retry_resumes(
    job: tuple[Path, pa.Table], make_asset: Callable[[Path], dg.AssetsDefinition]
) -> None:
    job_file, table = job
    (job_file.parent / "scorer.py").write_text(INTERRUPTING_SCORER)
    job_file.write_text(job_file.read_text().replace('"scorer.py:Scorer"', '"scorer.py:Interrupting"'))

    result, _ = _materialize(make_asset(job_file))

    assert (job_file.parent / "interrupted.mark").exists()  # the first attempt was interrupted
    (retried,) = _events(result, "STEP_UP_FOR_RETRY")
    assert result.success
    (mat,) = result.asset_materializations_for_node("scores")
    assert mat.metadata["rows_succeeded"].value == ROWS
    # The retry resumed: the shards committed before the interruption were not scored again.
    assert 0 < mat.metadata["rows_this_run"].value < ROWS
    _assert_output_exact(job_file, table)


@WAYS
def test_exit_2_fails_without_retry(
    job: tuple[Path, pa.Table], make_asset: Callable[[Path], dg.AssetsDefinition]
) -> None:
    job_file, _ = job
    job_file.write_text(job_file.read_text().replace("[batch]", "[batch]\nno_such_key = 1"))

    result, _ = _materialize(make_asset(job_file))

    assert not result.success
    assert _events(result, "STEP_UP_FOR_RETRY") == []
    (failure,) = _events(result, "STEP_FAILURE")
    user = failure.step_failure_data.user_failure_data
    assert user.metadata["exit_code"].value == 2 and user.metadata["state"].value == "invalid"
    assert "no_such_key" in user.description
    assert result.asset_materializations_for_node("scores") == []


def test_docs_example_materializes(job: tuple[Path, pa.Table], monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/integrations.md's definitions, next to a job file ``job.toml``: both assets materialize, and
    the second finds the job complete (as the doc says)."""
    import re

    job_file, table = job
    doc = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
    section = doc.split("## dagster", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(job_file.parent)
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/integrations.md", "exec"), namespace)  # noqa: S102 - the doc's own example
    assert isinstance(namespace["defs"], dg.Definitions)

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [namespace["scores"], namespace["scores_pipes"]], instance=instance,
            resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
        )
    assert result.success
    first = result.asset_materializations_for_node("scores")[0].metadata
    second = result.asset_materializations_for_node("scores_pipes")[0].metadata
    # Whichever ran first scored every row; the other found nothing to do.
    assert sorted([first["rows_this_run"].value, second["rows_this_run"].value]) == [0, ROWS]
    _assert_output_exact(job_file, table)


BAD_ROWS_SCORER = SCORER + '''

class SomeBad(Scorer):
    """Fails on every row whose id ends in 007 (of each 500): 8 of 4,000 rows are dead-lettered."""

    def predict(self, batch):
        if (batch["customer_id"] % 500 == 7).any():
            raise ValueError("a bad row")
        return super().predict(batch)
'''


@WAYS
def test_exit_1_over_the_budget_fails_the_check_without_retry(
    job: tuple[Path, pa.Table], make_asset: Callable[[Path], dg.AssetsDefinition]
) -> None:
    job_file, _ = job
    (job_file.parent / "scorer.py").write_text(BAD_ROWS_SCORER)
    text = job_file.read_text().replace('"scorer.py:Scorer"', '"scorer.py:SomeBad"')
    text = text.replace('["f0", "f1", "f2"]', '["customer_id", "f0", "f1", "f2"]')
    job_file.write_text(text + "\n[errors]\nmax_failed_rows = 0\n")

    result, _ = _materialize(make_asset(job_file))

    assert not result.success
    assert _events(result, "STEP_UP_FOR_RETRY") == []
    (failure,) = _events(result, "STEP_FAILURE")
    user = failure.step_failure_data.user_failure_data
    assert user.metadata["exit_code"].value == 1 and "error budget exceeded" in user.description
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "error_budget" and not check.passed
    assert check.metadata["rows_failed"].value > 0 and check.metadata["max_failed_rows"].value == 0
    assert result.asset_materializations_for_node("scores") == []
