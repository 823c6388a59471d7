"""The public surface: what `infermill` exports, and that every CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import infermill
from infermill.cli import build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_all_is_pinned() -> None:
    assert sorted(infermill.__all__) == sorted([
        "BatchSpec", "ErrorsSpec", "InfermillError", "InputError", "InputSpec", "InterruptedRunError", "ItemError",
        "JobChangedError", "JobFailedError", "JobLockedError", "JobSpec", "ModelLoadError", "ModelSpec",
        "OutputConflictError", "OutputError",
        "OutputSpec", "RetrySpec", "RunResult", "RuntimeSpec", "ScheduleSpec", "SpecError", "TransientError",
        "__version__", "failures", "load_spec", "retry", "run", "runs", "status", "validate", "verify",
    ])
    for name in infermill.__all__:
        assert getattr(infermill, name) is not None


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[attr-defined]


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = set(re.findall(r"^## infermill (\S+)$", text, flags=re.M))
    assert documented == set(_commands())


def test_importing_infermill_does_not_import_heavy_libraries() -> None:
    import subprocess
    import sys

    heavy = "('pyarrow', 'pandas', 'sklearn', 'torch')"
    code = f"import sys, infermill.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
