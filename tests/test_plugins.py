"""Plugins: the registry (built-ins, register(), entry points of installed packages), and the example
plugin package installed with pip and run end to end through its model kind and its output format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import infermill
from infermill import registry
from infermill.errors import SpecError
from infermill.models.base import ModelAdapter

ROOT = Path(__file__).resolve().parents[1]


def test_every_builtin_is_registered_and_loads() -> None:
    assert {"hf", "http", "llm", "mlflow", "onnx", "python", "sentence-transformers", "sklearn", "torch"} <= set(
        registry.names("models")
    )
    assert {"parquet", "csv", "jsonl", "openai-batch"} <= set(registry.names("sources"))
    assert {"parquet", "csv", "jsonl", "openai-batch"} <= set(registry.names("sinks"))
    assert {"inline", "process"} <= set(registry.names("executors"))
    assert "sqlite" in registry.names("ledgers")
    for group in ("sources", "sinks", "executors", "ledgers"):
        for name in registry.names(group):
            assert isinstance(registry.load(group, name), type), (group, name)


def test_an_unknown_name_says_what_is_there() -> None:
    with pytest.raises(SpecError, match="unknown output format 'parqet'") as info:
        registry.load("sinks", "parqet")
    assert "did you mean 'parquet'?" in (info.value.hint or "")


def test_a_job_file_naming_an_unknown_format_is_refused_early(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[input]\npath = "x.parquet"\n[model]\nkind = "python"\nentrypoint = "m.py:M"\n'
                   '[output]\npath = "out"\nformat = "parqet"\n')
    with pytest.raises(SpecError, match="unknown output format 'parqet'"):
        infermill.load_spec(job)


class Doubler(ModelAdapter):
    kind = "doubler"

    def predict(self, inputs: Any) -> Any:
        return {"x_out": pc.multiply(inputs.column(0), 2)}

    def fingerprint(self) -> str:
        return "doubler-1"


def test_register_adds_a_model_kind_from_code(tmp_path: Path) -> None:
    registry.register("models", "doubler", Doubler)
    try:
        pq.write_table(pa.table({"id": [1, 2, 3], "x": [1.0, 2.0, 3.0]}), tmp_path / "data.parquet")
        job = tmp_path / "job.toml"
        job.write_text('[input]\npath = "data.parquet"\nid_column = "id"\n[model]\nkind = "doubler"\n'
                       'features = ["x"]\noutputs = ["x_out"]\n[output]\npath = "out"\n')
        result = infermill.run(job, progress="off")
        assert result.rows_succeeded == 3
        out = pq.read_table(tmp_path / "out" / "part-00000-a1.parquet")
        assert out.column("x_out").to_pylist() == [2.0, 4.0, 6.0]
    finally:
        registry._FROM_CODE["models"].pop("doubler", None)


def test_building_a_spec_imports_no_plugin_module() -> None:
    """Only the formats' light settings modules (their keys are checked while the spec is built)."""
    code = (
        "import sys, infermill\n"
        "spec = infermill.JobSpec.from_dict({'input': {'path': 'x.csv', 'format': 'csv', 'csv_delimiter': ';'}, "
        "'model': {'kind': 'python', 'entrypoint': 'm.py:M'}, 'output': {'path': 'out', 'compression': 'zstd'}})\n"
        "assert spec.input_settings().csv_delimiter == ';' and spec.output_settings().compression == 'zstd'\n"
        "print(sorted(m for m in sys.modules if m.startswith(('infermill.sources.', 'infermill.sinks.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['infermill.sinks.settings', 'infermill.sources.settings']"


@pytest.mark.slow
def test_the_example_plugin_package_installs_and_runs_a_job(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(site), str(ROOT / "examples" / "plugin")],
        check=True, capture_output=True, text=True,
    )
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["hello", "plugin", "world"]}), tmp_path / "data.parquet")
    job = tmp_path / "job.toml"
    job.write_text('[input]\npath = "data.parquet"\nid_column = "id"\n[model]\nkind = "shout"\n'
                   'features = ["text"]\n[output]\npath = "out"\nformat = "tsv"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "infermill", "run", str(job), "-q"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["part-00000-a1.tsv"]
    lines = (tmp_path / "out" / "part-00000-a1.tsv").read_text().splitlines()
    assert lines == ["1\tHELLO", "2\tPLUGIN", "3\tWORLD"]
    verify = subprocess.run([sys.executable, "-m", "infermill", "verify", str(job)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
