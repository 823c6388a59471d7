"""The demo: generated files, determinism, the job file, and a real run over a small dataset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from infermill.demo import FEATURES, closing_text, make_demo, run_demo
from infermill.spec import load_spec

ROWS = 20_000
FILES = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), rows=ROWS, files=FILES, seed=7)


def _customers(job: Path) -> list[Path]:
    return sorted((job.parent / "data" / "customers").glob("*.parquet"))


def test_writes_data_model_and_job_file(demo: Path) -> None:
    root = demo.parent
    assert demo == root / "churn.toml"
    assert (root / "models" / "churn.joblib").is_file()
    files = _customers(demo)
    assert len(files) == FILES
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == ROWS
    table = ds.dataset(files, format="parquet").to_table()
    assert table.column_names == ["customer_id", *FEATURES]
    assert table.schema.field("customer_id").type == "int64"
    ids = table.column("customer_id").to_numpy()
    assert len(np.unique(ids)) == ROWS
    # The label is what the model learned; the customers to score do not carry it.
    assert "churned" not in table.column_names


def test_row_groups_are_64k_rows(tmp_path: Path) -> None:
    job = make_demo(tmp_path, rows=150_000, files=1)
    metadata = pq.ParquetFile(_customers(job)[0]).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [65_536, 65_536, 18_928]


def test_same_seed_same_data(demo: Path, tmp_path: Path) -> None:
    again = make_demo(tmp_path / "again", rows=ROWS, files=FILES, seed=7)
    other = make_demo(tmp_path / "other", rows=ROWS, files=FILES, seed=8)
    for first, second in zip(_customers(demo), _customers(again), strict=True):
        assert pq.read_table(first).equals(pq.read_table(second))
    assert not pq.read_table(_customers(demo)[0]).equals(pq.read_table(_customers(other)[0]))
    assert demo.read_text() == again.read_text()


def test_job_file_parses(demo: Path) -> None:
    spec = load_spec(demo)
    assert spec.name == "churn"
    assert spec.input.id_column == "customer_id"
    assert spec.input_format() == "parquet"
    assert spec.model.kind == "sklearn"
    assert spec.model.trusted is True
    assert spec.model.features == FEATURES
    assert spec.model.outputs == ["churn_probability"]
    assert spec.output.format == "parquet"
    assert spec.runtime.workers == 1
    assert Path(spec.resolve(spec.model.path or "")).is_file()


def test_run_scores_every_customer(tmp_path: Path) -> None:
    result, text = run_demo(tmp_path, rows=ROWS, progress="off")
    assert result.state == "complete"
    assert result.rows_succeeded == ROWS
    assert result.rows_failed == 0
    assert result.manifest_path is not None and Path(result.manifest_path).is_file()
    output = pq.read_table(result.output_path)
    assert output.num_rows == ROWS
    assert set(output.column_names) >= {"customer_id", "churn_probability", "contract", "monthly_charges"}
    assert len(np.unique(output.column("customer_id").to_numpy())) == ROWS
    scores = output.column("churn_probability").to_numpy()
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert 0.1 < scores.mean() < 0.5  # the generated churn rate is about 30%
    assert f"Scored {ROWS:,} customers" in text
    assert "infermill status" in text and "--restart" in text

    # The demo is reused, and a complete job has nothing left to do.
    again, text = run_demo(tmp_path, rows=ROWS, progress="off")
    assert again.rows_this_run == 0 and again.rows_succeeded == ROWS
    assert text.startswith("Nothing to do")


def test_run_demo_remakes_for_other_rows(tmp_path: Path) -> None:
    run_demo(tmp_path, rows=5_000, progress="off")
    result, _ = run_demo(tmp_path, rows=6_000, progress="off")
    assert result.rows_this_run == 6_000 and result.rows_succeeded == 6_000


def test_closing_text_names_the_places(demo: Path) -> None:
    from infermill.engine import RunResult

    root = demo.parent
    result = RunResult(
        job="churn", state="complete", exit_code=0, message="complete", rows_total=ROWS, rows_succeeded=ROWS,
        rows_failed=0, shards_total=1, shards_committed=1, rows_this_run=ROWS, seconds=2.0,
        output_path=str(root / "out" / "churn"), manifest_path=str(root / "out" / "churn" / "_manifest.json"),
        ledger_path=str(root / ".infermill" / "churn.sqlite"),
    )
    text = closing_text(result, demo)
    assert f"Scored {ROWS:,} customers in 2.0 s" in text and "rows/s" in text
    for expected in ("_manifest.json", "churn.sqlite", f"infermill status {demo}", "--restart"):
        assert expected in text


CLOSING = """
from infermill.demo import closing_text
from infermill.engine import RunResult

result = RunResult(
    job="churn", state="complete", exit_code=0, message="complete", rows_total=10, rows_succeeded=10,
    rows_failed=0, shards_total=1, shards_committed=1, rows_this_run=10, seconds=1.0,
    output_path="out/churn", manifest_path="out/churn/_manifest.json", ledger_path=".infermill/churn.sqlite",
)
print(closing_text(result, {job!r}))
"""


def _closing_text(job: Path, path: str) -> str:
    env = {**os.environ, "PATH": path}
    done = subprocess.run(
        [sys.executable, "-c", CLOSING.format(job=str(job))], env=env, capture_output=True, text=True,
        cwd=job.parent, check=True, timeout=60,
    )
    return done.stdout


def _section(text: str, title: str) -> list[str]:
    lines = text.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.strip().split("  #", 1)[0].strip() for line in lines]


def test_try_next_works_in_a_shell_that_never_activated_the_environment(demo: Path) -> None:
    # `make demo` runs .venv/bin/infermill from a shell whose PATH does not hold .venv/bin.
    bare_path = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))
    text = _closing_text(demo, bare_path)
    commands = _section(text, "Try next:") + _section(text, "Read the results:")
    assert len(commands) == 4
    for command in commands:
        assert not command.startswith(("infermill ", "python ")), command
    status = next(c for c in commands if " status " in c)
    done = subprocess.run(status, shell=True, env={**os.environ, "PATH": bare_path}, cwd=demo.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "state:   pending" in done.stdout
    assert "source " in text and "activate" in text


def test_try_next_uses_plain_names_where_they_are_this_environment(demo: Path) -> None:
    active = os.pathsep.join([os.path.dirname(os.path.abspath(sys.executable)), "/usr/bin", "/bin"])
    text = _closing_text(demo, active)
    if not shutil.which("infermill", path=active):
        pytest.skip("infermill is not installed as a console script in this environment")
    assert _section(text, "Try next:")[0] == "infermill status churn.toml"
    assert _section(text, "Read the results:")[0].startswith("python -c ")
