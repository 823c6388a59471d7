"""Reading a job (``load_spec``, its fingerprint, ``infermill status``, ``--help``, the schema) imports no
model adapter, numpy or pyarrow: those commands stay fast, and work where a kind's extra is missing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from infermill import registry
from infermill.engine import run

HEAVY = ("numpy", "pyarrow", "pandas")

# The smallest [model] section of each built-in kind that builds a spec.
KIND_KEYS: dict[str, str] = {
    "python": 'entrypoint = "scorer.py:Scorer"\noptions = {scale = 2}',
    "sklearn": 'path = "m.joblib"\ntrusted = true\nmethod = "predict"',
    "onnx": 'path = "m.onnx"\npositive_class = 1',
    "torch": 'factory = "net.py:build"\noptions = {hidden = 4}',
    "hf": 'path = "hf"\ntask = "text-classification"',
    "sentence-transformers": 'path = "st"',
    "llm": 'path = "lm"\nprompt_column = "q"',
    "http": 'protocol = "openai-chat"\nurl = "http://127.0.0.1:9/v1"\nconcurrency = 2',
    "mlflow": 'path = "mlm"',
}


def _imported_modules(args: list[str], cwd: Path) -> tuple[set[str], str]:
    """The modules a ``python -X importtime ARGS`` process imported (from its import-time report), and its
    stdout."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "infermill" in names  # the report was read
    return names, done.stdout


def _adapters(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("infermill.models.") and n != "infermill.models.settings"}


def test_every_kind_is_in_the_table() -> None:
    assert set(KIND_KEYS) == set(registry.builtin("models"))


def test_building_and_fingerprinting_a_spec_of_every_kind_imports_no_adapter(tmp_path: Path) -> None:
    for kind, keys in KIND_KEYS.items():
        body = f'[input]\npath = "data.parquet"\n[model]\nkind = "{kind}"\n{keys}\n[output]\npath = "out"\n'
        (tmp_path / f"{kind}.toml").write_text(body)
    code = textwrap.dedent(
        """
        import sys
        from infermill.spec import load_spec
        for kind in sys.argv[1:]:
            spec = load_spec(kind + ".toml")
            spec.fingerprint()
            spec.model_settings()
        """
    )
    names, _ = _imported_modules(["-c", code, *KIND_KEYS], tmp_path)
    assert not names & set(HEAVY)
    assert not _adapters(names)


def test_the_schema_lists_every_kinds_keys_without_importing_adapters(tmp_path: Path) -> None:
    names, out = _imported_modules(["-m", "infermill", "schema"], tmp_path)
    assert not names & set(HEAVY)
    assert not _adapters(names)
    branches = json.loads(out)["properties"]["model"]["allOf"]
    listed = {b["if"]["properties"]["kind"]["const"]: b["then"]["properties"] for b in branches}
    assert "entrypoint" in listed["python"] and "method" in listed["sklearn"] and "options" in listed["torch"]


def test_help_imports_neither_numpy_nor_pyarrow(tmp_path: Path) -> None:
    names, out = _imported_modules(["-m", "infermill", "--help"], tmp_path)
    assert "usage: infermill" in out
    assert not names & set(HEAVY)


def test_status_of_a_never_run_and_a_finished_job_imports_neither_numpy_nor_pyarrow(
    parquet_job: Callable[..., tuple[Path, pa.Table]],
) -> None:
    job, _ = parquet_job(rows=300, files=1, shard_rows=300, batch=300)
    names, out = _imported_modules(["-m", "infermill", "status", str(job)], job.parent)
    assert "state:   pending" in out
    assert not names & set(HEAVY)

    assert run(job).state == "complete"
    names, out = _imported_modules(["-m", "infermill", "status", str(job)], job.parent)
    assert "state:   complete" in out and "rows:    300 of 300 succeeded" in out
    assert not names & set(HEAVY)
    assert not _adapters(names)
