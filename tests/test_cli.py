"""The CLI: exit codes and exact messages, through the real `infermill` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert "input:    parquet, 4 files, 5 shards, 20,000 rows" in out
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


def test_run_help_names_every_model_kind_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    from infermill.models import MODEL_KINDS
    from infermill.sinks.formats import SINK_FORMATS
    from infermill.sources import SOURCE_FORMATS

    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    # The example job's "a | b | c" comments are the lists of choices.
    choices = {word.strip() for line in out.splitlines() if " | " in line for word in line.split("#", 1)[1].split("|")}
    choices = {word.split()[-1] if word.split() else word for word in choices}
    for name in [*MODEL_KINDS, *SOURCE_FORMATS, *SINK_FORMATS]:
        assert name in choices, f"`infermill run --help` does not list {name!r}: {sorted(choices)}"


def test_one_shard_is_not_shards(parquet_job, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job(rows=1_000, files=1)
    assert main(["run", str(job), "--quiet"]) == 0
    assert "scores: complete: 1,000 rows in 1 shard (" in capsys.readouterr().out
    assert main(["validate", str(job)]) == 0
    assert "input:    parquet, 1 file, 1 shard, 1,000 rows" in capsys.readouterr().out


def test_status_before_the_total_is_known_has_no_question_mark(job_dir: Path, capsys) -> None:
    (job_dir / "data.csv").write_text("customer_id,f0,f1,f2\n1,0.5,1.0,2.0\n")
    job = write_job(job_dir / "job.toml", """
        name = "scores"
        [input]
        path = "data.csv"
        id_column = "customer_id"
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        outputs = ["score"]
        [output]
        path = "out"
        """)
    assert main(["status", str(job)]) == 0
    out = capsys.readouterr().out
    assert "rows:    0 succeeded, 0 failed" in out
    assert "?" not in out


def _closed_stdout_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a stdout pipe whose reader is already gone, as in `infermill status JOB | head -0`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "infermill", *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", [["run", "job.toml", "--quiet"], ["status", "job.toml"], ["--help"]])
def test_a_closed_stdout_ends_the_command_quietly(parquet_job, job_dir: Path, command: list[str]) -> None:
    parquet_job(rows=2_000)
    done = _closed_stdout_run(*command, cwd=job_dir)
    assert done.stderr == ""
    assert done.returncode == 0
    if command[0] == "run":  # the job itself ran to the end: only its summary went nowhere
        assert json.loads((job_dir / "out" / "_manifest.json").read_text())["rows_total"] == 2_000


def test_a_failing_setup_says_how_to_see_the_traceback(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    (job_dir / "scorer.py").write_text(
        "class Scorer:\n"
        "    def setup(self):\n"
        "        self.weights = load()\n"
        "    def predict(self, batch):\n"
        "        return batch['f0']\n"
        "def load():\n"
        "    raise KeyError('weights')\n"
    )
    assert main(["run", str(job)]) == 2
    err = _error(capsys)
    assert "Scorer.setup() raised KeyError" in err
    assert "Traceback" not in err
    assert "--debug" in err  # the hint names the way to the traceback it talks about
    assert main(["run", str(job), "--debug"]) == 2
    err = _error(capsys)
    assert "Traceback" in err and "in load" in err


def test_validate_refuses_an_output_that_cannot_be_written(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    text = job.read_text()
    # A folder under a regular file cannot be made, whoever runs the test (root included).
    job.write_text(text.replace('path = "out"', 'path = "scorer.py/out"'))
    assert main(["validate", str(job)]) == 1
    assert "output directory is not writable" in _error(capsys)
    assert main(["run", str(job)]) == 1  # what validate predicts
    assert "output directory is not writable" in _error(capsys)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_validate_refuses_an_output_under_proc(parquet_job, capsys) -> None:
    job, _ = parquet_job()
    job.write_text(job.read_text().replace('path = "out"', 'path = "/proc/infermill-test-output"'))
    assert main(["validate", str(job)]) == 1
    assert "output directory is not writable: /proc/infermill-test-output" in _error(capsys)


def test_validate_leaves_no_output_behind(parquet_job, job_dir: Path, capsys) -> None:
    job, _ = parquet_job()
    job.write_text(job.read_text().replace('path = "out"', 'path = "results/today/out"'))
    assert main(["validate", str(job)]) == 0
    assert "ok: the job is valid" in capsys.readouterr().out
    assert not (job_dir / "results").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_header_only_csv_is_an_input_error_for_validate_and_run(job_dir: Path, command: str, capsys) -> None:
    (job_dir / "data.csv").write_text("customer_id,f0,f1,f2\n")
    job = write_job(job_dir / "job.toml", """
        [input]
        path = "data.csv"
        id_column = "customer_id"
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        outputs = ["score"]
        [output]
        path = "out"
        """)
    assert main([command, str(job)]) == 2
    err = _error(capsys)
    assert err.startswith("error: the input (data.csv) has no rows: ")
    assert "holds only a header or blank lines" in err
    assert "infermill validate JOB" in err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_parquet_input_without_rows_is_an_input_error_for_validate_and_run(
    parquet_job, job_dir: Path, command: str, capsys
) -> None:
    job, table = parquet_job(rows=100, files=1)
    import pyarrow.parquet as pq

    pq.write_table(table.slice(0, 0), job_dir / "data" / "part-000.parquet")
    assert main([command, str(job)]) == 2
    assert _error(capsys).startswith("error: the input (data/*.parquet) has no rows")
    if command == "run":
        assert main(["status", str(job), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "pending"  # no empty job was recorded as complete


def test_run_help_example_is_a_job_file_indented_under_its_heading(capsys: pytest.CaptureFixture[str]) -> None:
    import textwrap
    import tomllib

    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nRun JOB: plan shards") == 1  # the description starts at the margin
    example = out.split("example job file (job.toml):\n", 1)[1].split("\n\n", 1)[0]
    assert all(line.startswith("  ") for line in example.splitlines()), example
    job = tomllib.loads(textwrap.dedent(example))
    assert job["model"]["kind"] == "sklearn" and job["output"]["format"] == "parquet"
