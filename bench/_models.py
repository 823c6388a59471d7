"""Models for the benchmarks: python-kind models for bench_overhead.py (loaded by infermill through
``entrypoint = "<this file>:Name"``) and the torch factory of bench_defaults.py."""

from __future__ import annotations

from typing import Any

import numpy as np


class Noop:
    """Returns its one feature column unchanged: everything measured is infermill's own work."""

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return next(iter(batch.values()))


class Busy:
    """A fixed amount of single-threaded numpy work per row (``reps`` rounds of sin and add).

    numpy's element-wise functions never start threads, so one worker uses one core.
    """

    def __init__(self, reps: int = 1600) -> None:
        self.reps = reps

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        x = next(iter(batch.values())).astype(np.float64)
        y = x.copy()
        for _ in range(self.reps):
            np.sin(y, out=y)
            y += x
        return y


def mlp(features: int = 20, hidden: int = 256) -> Any:
    """The torch workload of bench_defaults.py: a 3-layer MLP with a sigmoid output (``kind = "torch"``
    builds it through ``factory``; its weights are a safetensors file)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1), torch.nn.Sigmoid(),
    )
