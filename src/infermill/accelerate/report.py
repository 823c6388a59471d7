"""The acceleration decision as the ledger keeps it, and as ``status`` and ``profile`` show it.

Each worker decides once (``accelerate.verify``) and adds its decision to the stats of every shard it
stages (key ``"accelerate"``, a :meth:`Decision.as_dict`), which both ledger backends store with the shard.
Light on purpose: ``infermill status`` reads it without numpy or any converter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["STATS_KEY", "Decision", "decisions", "described"]

STATS_KEY = "accelerate"
"""The key of a shard's stats that holds its worker's decision."""


@dataclass(frozen=True)
class Decision:
    """What one worker did about ``[model] accelerate``."""

    requested: str
    """The job's ``accelerate`` value ("auto", "compile", ...)."""
    used: bool
    """The accelerated model scored this worker's rows."""
    method: str | None = None
    """The method decided on (used), or the last one tried (not used); None when none applied."""
    metric: str | None = None
    """"max_abs_diff" or "min_cosine"; None when no comparison ran."""
    value: float | None = None
    """The metric over the sample (accelerated against original)."""
    bound: float | None = None
    """The bound it had to meet (the method's default or ``accelerate_tolerance``)."""
    sample_rows: int = 0
    """Rows of the job's first batch compared."""
    speedup: float | None = None
    """Original seconds over accelerated seconds on the sample."""
    build_seconds: float | None = None
    """Conversion time; 0.0 when the artifact came from the cache."""
    cache_hit: bool | None = None
    artifact: str | None = None
    """The converted model's path in the cache."""
    reason: str | None = None
    """Why the accelerated model was not used (None when used)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def within(self) -> bool:
        """The metric met the bound (False when no comparison ran)."""
        if self.value is None or self.bound is None:
            return False
        return self.value <= self.bound if self.metric == "max_abs_diff" else self.value >= self.bound

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """One line: ``compile used: max_abs_diff 2.2e-16 <= 1e-06 on 256 rows, 2.9x faster, built in 1.3s``."""
        parts = []
        if self.metric is not None and self.value is not None and self.bound is not None:
            op = "<=" if self.metric == "max_abs_diff" else ">="
            shown = op if self.used or self.within else "outside"
            parts.append(f"{self.metric} {self.value:.3g} {shown} {self.bound:g} "
                         f"on {self.sample_rows:,} rows")
        if self.speedup is not None:
            parts.append(f"{self.speedup:.2f}x the original's speed")
        if self.cache_hit:
            parts.append("loaded from the cache")
        elif self.build_seconds is not None:
            parts.append(f"built in {self.build_seconds:.2f}s")
        head = f"{self.method} used" if self.used else f"{self.method or self.requested} not used"
        if not self.used and self.reason:
            head += f" ({self.reason}); the original model ran"
        return head + (": " + ", ".join(parts) if parts else "")


def decisions(stats: Iterable[Mapping[str, Any]]) -> list[tuple[Decision, int]]:
    """The distinct decisions recorded in shard stats, each with how many shards carry it, most shards first."""
    counts: dict[str, tuple[Decision, int]] = {}
    for item in stats:
        raw = item.get(STATS_KEY)
        if not isinstance(raw, Mapping):
            continue
        decision = Decision.from_dict(raw)
        # Workers that decided alike are one line: the figures of the first one seen stand for them.
        key = f"{decision.used}|{decision.method}|{decision.reason}"
        known = counts.get(key)
        counts[key] = (known[0] if known else decision, (known[1] if known else 0) + 1)
    return sorted(counts.values(), key=lambda pair: -pair[1])


def described(stats: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct decisions as plain data (``status --json``, ``profile --json``): each decision's fields,
    ``shards`` (how many carry it) and ``text`` (its line)."""
    return [{**d.as_dict(), "shards": n, "text": d.describe()} for d, n in decisions(stats)]
