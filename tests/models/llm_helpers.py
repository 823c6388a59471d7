"""The tiny causal LM for tests: built once per process (random weights, offline), copied per test."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from infermill.testing.llm import make_tiny_llm


@cache
def _built(seed: int = 0) -> Path:
    folder = tempfile.mkdtemp(prefix="infermill-tiny-lm-")
    atexit.register(shutil.rmtree, folder, True)
    return make_tiny_llm(Path(folder) / "lm", seed=seed)


def tiny_lm(folder: Path, seed: int = 0, name: str = "lm") -> Path:
    """A copy of the tiny model (128 positions, character tokens, a chat template) in ``folder / name``."""
    target = folder / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(_built(seed), target)
    return target
