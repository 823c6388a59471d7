"""Exponential backoff with full jitter, shared by the engine's batch retries and the http client."""

from __future__ import annotations

import random

__all__ = ["full_jitter"]


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].
    The jitter spreads retries of many workers apart instead of sending them in waves."""
    return rng.uniform(0.0, min(cap, base * (2 ** (attempt - 1))))
