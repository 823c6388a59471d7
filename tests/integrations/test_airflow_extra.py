"""Without Airflow installed (the main suite's environment), importing the integration says how to get it."""

from __future__ import annotations

import importlib
import importlib.util

import pytest


@pytest.mark.skipif(importlib.util.find_spec("airflow") is not None, reason="Airflow is installed here")
def test_missing_airflow_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'infermill\[airflow\]'"):
        importlib.import_module("infermill.integrations.airflow")


def test_import_infermill_imports_no_orchestrator() -> None:
    import subprocess
    import sys

    code = "import sys, infermill; print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
