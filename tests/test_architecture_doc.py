"""docs/architecture.md: its Python blocks run, in order, in one namespace, in a fresh folder (each holds
its own asserts): the examples of adding a model kind, a source, a sink, an executor and a ledger
backend, and of subscribing to a run's events."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from infermill import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    before = {group: dict(registry._FROM_CODE[group]) for group in registry.GROUPS}
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own examples
    finally:
        os.chdir(tmp_path)
        for group in registry.GROUPS:
            registry._FROM_CODE[group] = before[group]
