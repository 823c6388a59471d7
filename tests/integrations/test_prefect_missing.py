"""Where Prefect is not installed (the main environment): ``import infermill`` never needs it, and the
integration module says which extra to install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("prefect") is not None, reason="Prefect is installed: tests/integrations/test_prefect.py"
)


def test_the_integration_names_the_extra_to_install() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import infermill.integrations.prefect"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "pip install 'infermill[prefect]'" in done.stderr.splitlines()[-1]
