"""Shared fixtures: small real datasets, a real python model file, job files, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# The PostgreSQL server fixtures (postgres_server, postgres_url, ledger_url) for ledger tests.
pytest_plugins = ["tests.postgres"]

SCORER = '''
import numpy as np

class Scorer:
    """A deterministic model: score = 0.5 * f0 + f1 - 0.25 * f2."""

    def setup(self):
        self.weights = np.array([0.5, 1.0, -0.25])

    def predict(self, batch):
        return {"score": batch["f0"] * self.weights[0] + batch["f1"] * self.weights[1] + batch["f2"] * self.weights[2]}
'''


def make_table(rows: int, seed: int = 0, start_id: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "customer_id": np.arange(start_id, start_id + rows, dtype=np.int64),
            "f0": rng.normal(size=rows),
            "f1": rng.normal(size=rows),
            "f2": rng.normal(size=rows),
            "segment": rng.choice(["a", "b", "c"], size=rows),
        }
    )


def expected_score(table: pa.Table) -> np.ndarray:
    f0, f1, f2 = (table.column(c).to_numpy() for c in ("f0", "f1", "f2"))
    return 0.5 * f0 + 1.0 * f1 - 0.25 * f2


def write_parquet_files(directory: Path, rows: int, files: int, row_group_size: int = 1_000) -> pa.Table:
    """Write ``rows`` rows over ``files`` Parquet files; return the whole table."""
    directory.mkdir(parents=True, exist_ok=True)
    table = make_table(rows)
    per = -(-rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * per, per), directory / f"part-{i:03d}.parquet", row_group_size=row_group_size)
    return table


def write_job(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def toml_value(value: Any) -> str:
    """``value`` as a TOML value: strings, numbers, booleans, lists and inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)  # JSON's strings, numbers and true/false are TOML's


def job_toml(path: Path, *, name: str | None = None, **sections: dict[str, Any] | None) -> Path:
    """Write a job file from its sections as dicts (``input={...}, model={...}``; a None section is left out)."""
    lines = [f"name = {toml_value(name)}"] if name else []
    for section, keys in sections.items():
        if keys is not None:
            lines += [f"[{section}]", *(f"{key} = {toml_value(value)}" for key, value in keys.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "scorer.py").write_text(SCORER)
    return tmp_path


@pytest.fixture
def parquet_job(job_dir: Path) -> Callable[..., tuple[Path, pa.Table]]:
    """A parquet -> python model -> parquet job; keyword overrides go into the TOML text."""

    def make(
        rows: int = 20_000, files: int = 4, shard_rows: int = 4_000, batch: int = 1_000, extra: str = "",
        output_format: str = "parquet", workers: int = 1,
    ) -> tuple[Path, pa.Table]:
        table = write_parquet_files(job_dir / "data", rows, files)
        job = write_job(
            job_dir / "job.toml",
            f"""
            name = "scores"
            [input]
            path = "data/*.parquet"
            id_column = "customer_id"
            shard_rows = {shard_rows}
            [model]
            kind = "python"
            entrypoint = "scorer.py:Scorer"
            features = ["f0", "f1", "f2"]
            outputs = ["score"]
            [batch]
            size = {batch}
            [output]
            path = "out"
            format = "{output_format}"
            keep = ["segment"]
            [runtime]
            workers = {workers}
            {extra}
            """,
        )
        return job, table

    return make


def predict_callers(monkeypatch: pytest.MonkeyPatch, adapter_cls: type) -> set[str]:
    """Record the names of the threads that call ``adapter_cls.predict`` (lane threads without their
    number: ``infermill-lane``), in the set returned."""
    import threading

    callers: set[str] = set()
    predict = adapter_cls.predict

    def recorded(self: Any, inputs: Any) -> Any:
        callers.add(threading.current_thread().name.rsplit("_", 1)[0])
        return predict(self, inputs)

    monkeypatch.setattr(adapter_cls, "predict", recorded)
    return callers


def run_lanes_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_cls: type, texts: list[str], model: str, batch: str,
    parallel: str,
) -> pa.Table:
    """Score ``texts`` (ids 0..n-1) with ``workers = 1, threads_per_worker = 2`` and the ``[model]`` and
    ``[batch]`` keys given; check every row succeeded, that ``predict`` ran on lanes (``parallel =
    "batches"``) or on the worker thread, and that the output is in input order; return the output."""
    import infermill

    callers = predict_callers(monkeypatch, adapter_cls)
    n = len(texts)
    pq.write_table(pa.table({"id": np.arange(n), "text": texts}), tmp_path / "docs.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "docs.parquet"\nid_column = "id"\n[model]\n{model}parallel = "{parallel}"\n'
        f'[batch]\n{batch}[output]\npath = "out"\n[runtime]\nworkers = 1\nthreads_per_worker = 2\n'
    )
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_succeeded == n
    assert callers == ({"infermill-lane"} if parallel == "batches" else {"infermill-worker"})
    out = read_output(tmp_path / "out")
    assert out.column("id").to_pylist() == list(range(n))  # input order, whatever order the lanes took
    monkeypatch.undo()
    return out


def read_output(out_dir: Path, fmt: str = "parquet") -> pa.Table:
    """Read every committed part file listed in the manifest (or on disk) into one table."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    manifest = out_dir / "_manifest.json"
    if manifest.exists():
        names = [f["path"] for f in json.loads(manifest.read_text())["files"]]
    else:
        names = sorted(p.name for p in out_dir.glob("part-*"))
    tables = []
    for name in names:
        path = out_dir / name
        if fmt == "parquet":
            tables.append(pq.read_table(path))
        elif fmt == "csv":
            tables.append(pacsv.read_csv(path))
        elif fmt == "arrow":
            import pyarrow.ipc as ipc

            with ipc.open_file(path) as reader:
                tables.append(reader.read_all())
        else:
            tables.append(pajson.read_json(path))
    return pa.concat_tables(tables) if tables else pa.table({})


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run the real ``infermill`` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infermill", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
