"""The CLI: exit codes and exact messages, through the real `infermill` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermill.cli import main
from tests.conftest import write_job


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "status", "validate", "demo"):
        assert command in out
    assert "75  interrupted" in out


@pytest.mark.parametrize("command", ["run", "status", "validate", "demo", "failures", "retry", "profile"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: infermill {command}" in out
    assert "exit codes" in out


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def test_run_then_status_json(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    assert main(["run", str(job), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "scores: complete: 20,000 rows in 5 shards" in out
    assert "_manifest.json" in out
    assert main(["status", str(job), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "complete"
    keys = ("rows_total", "rows_succeeded", "rows_failed", "shards_total", "shards_committed")
    assert [info[k] for k in keys] == [20_000, 20_000, 0, 5, 5]
    assert main(["run", str(job), "--quiet"]) == 0
    assert "nothing to do: the job is already complete" in capsys.readouterr().out


def test_validate_reports_ok(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert "input:    parquet, 4 file(s), 5 shard(s), 20,000 rows" in out
    assert "scored 16 sample rows -> score (double)" in out
    assert "ok: the job is valid" in out


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def test_missing_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert f"error: job file not found: {tmp_path / 'nope.toml'}" in _error(capsys)


@pytest.mark.parametrize(
    ("edit", "code", "message"),
    [
        (("data/*.parquet", "missing/*.parquet"), 2, "matches no files"),
        (("data/*.parquet", "nowhere.parquet"), 2, "nowhere.parquet"),
        (('features = ["f0", "f1", "f2"]', 'features = ["f0", "fX"]'), 2,
         "column 'fX' (from 'model.features') is not in the input"),
        (('kind = "python"', 'kind = "tensorflow"'), 2, "unknown model kind 'tensorflow' (from 'model.kind')"),
        (("entrypoint =", "entrypont ="), 2, "unknown key 'model.entrypont'"),
        (("size = 1000", 'size = "big"'), 2, "'batch.size' must be int"),
        (('id_column = "customer_id"', 'id_column = "cust"'), 2, "column 'cust' (from 'input.id_column')"),
        (("[output]", "[outptu]"), 2, "unknown key 'outptu'"),
    ],
)
def test_bad_input_gives_one_clear_error(parquet_job, capsys: pytest.CaptureFixture[str], edit, code, message) -> None:
    job, _ = parquet_job()
    job.write_text(job.read_text().replace(*edit))
    assert main(["run", str(job)]) == code
    err = _error(capsys)
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("error: ")


def test_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path / "bad.toml", "[input\npath = 1\n")
    assert main(["validate", str(job)]) == 2
    assert "invalid TOML" in _error(capsys)


def test_model_file_that_does_not_load(parquet_job, job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    (job_dir / "scorer.py").write_text("import not_a_module_xyz\n")
    assert main(["run", str(job)]) == 2
    err = _error(capsys)
    assert "not_a_module_xyz" in err and "Traceback" not in err


def test_debug_shows_traceback(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job()
    job.write_text(job.read_text().replace('kind = "python"', 'kind = "nope"'))
    assert main(["run", str(job), "--debug"]) == 2
    assert "Traceback" in _error(capsys)


def test_committed_work_is_untouched_by_a_bad_rerun(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    assert main(["run", str(job), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in (job_dir / "out").iterdir() if p.is_file()}
    job.write_text(job.read_text().replace('features = ["f0", "f1", "f2"]', 'features = ["zz"]'))
    assert main(["run", str(job), "-q"]) == 2
    assert {p.name: p.read_bytes() for p in (job_dir / "out").iterdir() if p.is_file()} == before


def test_validate_warns_about_sample_rows_that_would_be_dead_lettered(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    (job_dir / "picky.py").write_text(
        "from infermill import ItemError\n"
        "def predict(batch):\n"
        "    if (batch['f0'] > 10).any() or 3 in batch['customer_id']:\n"
        "        raise ItemError('row 3 is bad')\n"
        "    return batch['f0']\n"
    )
    job.write_text(job.read_text().replace("scorer.py:Scorer", "picky.py:predict")
                   .replace('features = ["f0", "f1", "f2"]', 'features = ["customer_id", "f0"]'))
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert "scored 15 sample rows" in out
    assert "warning:  1 of 16 sample rows failed and would be dead-lettered, e.g. ItemError: row 3 is bad" in out


def test_validate_fails_when_every_sample_row_fails(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    (job_dir / "broken.py").write_text("def predict(batch):\n    raise ValueError('weights are garbage')\n")
    job.write_text(job.read_text().replace("scorer.py:Scorer", "broken.py:predict"))
    assert main(["validate", str(job)]) == 2
    assert "the model failed on every one of the first 16 input rows: ValueError: weights are garbage" in (
        capsys.readouterr().err
    )
