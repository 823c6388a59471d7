"""Python-kind models for bench_overhead.py (loaded by infermill through ``entrypoint = "<this file>:Name"``)."""

from __future__ import annotations

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
