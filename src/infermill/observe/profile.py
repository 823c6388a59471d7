"""Where the time went: stage totals from the ledger, and a one-line verdict with a suggestion.

Every shard records seconds spent reading, preprocessing, in the model, waiting for input, and writing
(stages overlap: they run on different threads). Divided by the shards' wall time they say which stage
bounds throughput::

    model-bound: model busy 96% of wall time; reader busy 14%, writer busy 3%
    input-bound: the model waited 41% of the time for data; reader busy 88%
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "profile_from_stats"]

STAGES = ("read_s", "preprocess_s", "model_s", "model_wait_s", "write_s", "wall_s")
WAIT_BOUND = 0.25
"""The model idling this share of the time for data (or for the writer) makes the run input/output-bound."""
MODEL_BOUND = 0.75


@dataclass(frozen=True)
class Profile:
    """Stage totals and the verdict for a set of shards."""

    rows: int
    shards: int
    stages: dict[str, float]
    shares: dict[str, float]
    """Each stage's seconds over the shards' wall seconds."""
    verdict: str
    suggestion: str
    counters: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as printed by ``infermill run`` and ``infermill profile``."""
        s = self.stages
        wall = s.get("wall_s", 0.0)
        lines = [f"profile: {self.verdict}", f"  suggestion: {self.suggestion}"]
        lines.append(
            f"  stages over {self.shards} shard(s), {self.rows:,} rows, {wall:.2f}s of worker wall time: "
            + ", ".join(
                f"{name[:-2]} {s.get(name, 0.0):.2f}s ({self.shares.get(name, 0.0):.0%})"
                for name in STAGES
                if name != "wall_s"
            )
        )
        extra = {k: v for k, v in self.counters.items() if v}
        if extra:
            lines.append("  " + ", ".join(f"{k} {v:g}" for k, v in sorted(extra.items())))
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "shards": self.shards,
            "stages": self.stages,
            "shares": self.shares,
            "verdict": self.verdict,
            "suggestion": self.suggestion,
            "counters": self.counters,
        }


def profile_from_stats(stats: Iterable[Mapping[str, Any]]) -> Profile:
    """Sum per-shard stats (as the ledger stores them) and judge the bottleneck."""
    totals = dict.fromkeys(STAGES, 0.0)
    counters: dict[str, float] = {"retries": 0, "bisections": 0, "oom_splits": 0}
    depths: dict[str, list[float]] = {"inbox_depth_avg": [], "outbox_depth_avg": []}
    rows = shards = 0
    for item in stats:
        shards += 1
        rows += int(item.get("rows", 0) or 0)
        for name in STAGES:
            totals[name] += float(item.get(name, 0.0) or 0.0)
        for name in counters:
            counters[name] += float(item.get(name, 0) or 0)
        for name, values in depths.items():
            if name in item:
                values.append(float(item[name]))
    wall = totals["wall_s"]
    shares = {name: (totals[name] / wall if wall > 0 else 0.0) for name in STAGES}
    verdict, suggestion = _judge(shares)
    for name, values in depths.items():
        if values:
            counters[name.replace("_avg", "")] = round(sum(values) / len(values), 2)
    return Profile(
        rows=rows,
        shards=shards,
        stages={k: round(v, 3) for k, v in totals.items()},
        shares={k: round(v, 3) for k, v in shares.items()},
        verdict=verdict,
        suggestion=suggestion,
        counters=counters,
    )


def _judge(shares: Mapping[str, float]) -> tuple[str, str]:
    model = shares.get("model_s", 0.0)
    wait = shares.get("model_wait_s", 0.0)
    reader = shares.get("read_s", 0.0) + shares.get("preprocess_s", 0.0)
    writer = shares.get("write_s", 0.0)
    busy = f"reader busy {reader:.0%}, writer busy {writer:.0%}"
    if shares.get("wall_s", 0.0) == 0.0:
        return "no timings recorded yet", "run the job first"
    if wait >= WAIT_BOUND and reader >= writer:
        return (
            f"input-bound: the model waited {wait:.0%} of the time for data; {busy}",
            "try more workers (runtime.workers) or a deeper prefetch (runtime.prefetch); make preprocessing "
            "cheaper; read from local disk rather than object storage",
        )
    if wait >= WAIT_BOUND:
        return (
            f"output-bound: the model waited {wait:.0%} of the time for the writer; {busy}",
            "write to local disk, prefer Parquet over JSONL/CSV, or keep fewer input columns (output.keep)",
        )
    if model >= MODEL_BOUND:
        return (
            f"model-bound: model busy {model:.0%} of wall time; {busy}",
            "the input side keeps up: a larger batch (batch.size), more workers or GPUs, or a faster model "
            "(ONNX, quantization) is what helps",
        )
    return (
        f"overhead-bound: model busy only {model:.0%} of wall time and waiting {wait:.0%}; {busy}",
        "per-batch overhead dominates: try a larger batch (batch.size)",
    )
