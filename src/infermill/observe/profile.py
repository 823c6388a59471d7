"""Where the time went: stage totals from the ledger, and a one-line verdict with a suggestion.

Every shard records seconds spent reading, preprocessing, in the model, waiting for input, and writing
(stages overlap: they run on different threads). Divided by the shards' wall time they say which stage
bounds throughput::

    model-bound: model busy 96% of wall time; reader busy 14%, writer busy 3%
    input-bound: the model waited 41% of the time for data; reader busy 88%

Start-up is told apart from the steady state: each shard records when it started and ended (wall clock)
and each worker's first shard its model set-up seconds (heavy imports, model load). Given the runs' spans
(the ledger's runs, or the ``run`` call itself, planning included), start-up is each run's time before its
first shard started; the steady state is the span of its shards. A run that is mostly start-up is
judged on that, whatever its shards did. Lanes (several batches scored at once) record their busy
seconds: lanes idle while the model loop did not wait for data make the verdict "idle lanes".

Older ledgers whose shards lack these fields are judged on the stages alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "profile_from_stats"]

STAGES = ("read_s", "preprocess_s", "model_s", "model_wait_s", "write_s", "wall_s")
WAIT_BOUND = 0.25
"""The model idling this share of the time for data (or for the writer) makes the run input/output-bound."""
MODEL_BOUND = 0.75
STARTUP_BOUND = 0.25
"""Start-up taking this share of the runs' time makes the run start-up-bound."""
LANES_BUSY = 0.7
"""Lanes busy less than this share of their time (with the model not waiting for data): idle lanes."""
BATCHES_PER_LANE = 4
"""Batches per lane below which the batch is too large for the job (the last ones leave lanes idle)."""
SMALL_CALL_ROWS = 512
"""Model calls of fewer rows than this on average: per-call overhead may be what a larger batch saves."""


@dataclass(frozen=True)
class Timeline:
    """Start-up apart from the steady state, over the runs that scored the shards."""

    startup_s: float
    """Seconds of the runs before their first shard started (planning, when the span includes it, worker
    start, imports, model load, batch sizing)."""
    steady_s: float
    """Seconds from each run's first shard start to its last shard end, summed over the runs."""
    setup_s: float
    """The slowest worker's model set-up seconds (imports and model load), part of the start-up."""


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
    timeline: Timeline | None = None
    """Start-up and steady state, when the shards recorded their times and the runs' spans were given."""
    lanes_busy: float | None = None
    """Share of the lanes' time spent in model calls, when batches ran on more than one lane."""

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
        t = self.timeline
        if t is not None:
            lines.append(
                f"  start-up {t.startup_s:.2f}s (model set-up {t.setup_s:.2f}s), steady state {t.steady_s:.2f}s"
            )
        if self.lanes_busy is not None:
            lines.append(f"  lanes busy {self.lanes_busy:.0%} of their time")
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
            "timeline": None if self.timeline is None else dict(self.timeline.__dict__),
            "lanes_busy": self.lanes_busy,
        }


def profile_from_stats(
    stats: Iterable[Mapping[str, Any]], runs: Sequence[tuple[float, float | None]] = ()
) -> Profile:
    """Sum per-shard stats (as the ledger stores them) and judge the bottleneck. ``runs``: the (start,
    end) wall-clock spans of the runs that scored them (end None: still running), to tell start-up apart."""
    items = list(stats)
    totals = dict.fromkeys(STAGES, 0.0)
    counters: dict[str, float] = {"retries": 0, "bisections": 0, "oom_splits": 0}
    depths: dict[str, list[float]] = {"inbox_depth_avg": [], "outbox_depth_avg": []}
    rows = shards = batches = calls = 0
    lane_busy = 0.0
    lanes_of: dict[Any, int] = {}  # worker -> its lanes
    spans_of: dict[Any, list[tuple[float, float]]] = {}  # worker -> its shards' wall-clock spans
    lane_time_unspanned = 0.0  # lanes x wall of shards recorded without their span (older ledgers)
    lanes_max = 1
    for item in items:
        shards += 1
        rows += int(item.get("rows", 0) or 0)
        batches += int(item.get("batches", 0) or 0)
        calls += int(item.get("calls", 0) or 0)
        for name in STAGES:
            totals[name] += float(item.get(name, 0.0) or 0.0)
        for name in counters:
            counters[name] += float(item.get(name, 0) or 0)
        for name, values in depths.items():
            if name in item:
                values.append(float(item[name]))
        lanes = int(item.get("lanes", 1) or 1)
        if lanes > 1 and "lane_busy_s" in item:
            lanes_max = max(lanes_max, lanes)
            lane_busy += float(item["lane_busy_s"] or 0.0)
            if "started_at" in item and "ended_at" in item:
                worker = item.get("worker", 0)
                lanes_of[worker] = max(lanes_of.get(worker, 1), lanes)
                spans_of.setdefault(worker, []).append((float(item["started_at"]), float(item["ended_at"])))
            else:
                lane_time_unspanned += lanes * float(item.get("wall_s", 0.0) or 0.0)
    # A worker's shards overlap (one is read while another is scored): its lanes had the union of their spans,
    # not the sum of their walls, which called a CPU-bound run "idle lanes".
    lane_time = lane_time_unspanned + sum(lanes_of[w] * _covered(spans) for w, spans in spans_of.items())
    wall = totals["wall_s"]
    shares = {name: (totals[name] / wall if wall > 0 else 0.0) for name in STAGES}
    timeline = _timeline(items, runs)
    busy = min(1.0, lane_busy / lane_time) if lane_time > 0 else None
    facts = _Facts(shares, timeline, busy, lanes_max, rows, batches, calls)
    verdict, suggestion = _judge(facts)
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
        timeline=timeline,
        lanes_busy=None if busy is None else round(busy, 3),
    )


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``spans``."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _timeline(items: list[Mapping[str, Any]], runs: Sequence[tuple[float, float | None]]) -> Timeline | None:
    """Start-up and steady state per run, from the shards' start and end times (None: not recorded)."""
    spans = [(float(i["started_at"]), float(i["ended_at"])) for i in items if "started_at" in i and "ended_at" in i]
    if not spans or not runs:
        return None
    now = time.time()
    startup = steady = 0.0
    for start, end in runs:
        stop = now if end is None else end
        inside = [(a, b) for a, b in spans if start <= a <= stop]
        if not inside:
            continue
        first = min(a for a, _ in inside)
        startup += first - start
        steady += max(b for _, b in inside) - first
    if startup == 0.0 and steady == 0.0:
        return None
    # Workers set up side by side: the slowest one's is what the run waited for.
    setup = max(float(i.get("setup_s", 0.0) or 0.0) for i in items)
    return Timeline(startup_s=round(startup, 3), steady_s=round(steady, 3), setup_s=round(setup, 3))


@dataclass(frozen=True)
class _Facts:
    shares: Mapping[str, float]
    timeline: Timeline | None
    lanes_busy: float | None
    lanes: int
    rows: int
    batches: int
    calls: int


def _judge(f: _Facts) -> tuple[str, str]:
    shares = f.shares
    model = shares.get("model_s", 0.0)
    wait = shares.get("model_wait_s", 0.0)
    reader = shares.get("read_s", 0.0) + shares.get("preprocess_s", 0.0)
    writer = shares.get("write_s", 0.0)
    busy = f"reader busy {reader:.0%}, writer busy {writer:.0%}"
    if shares.get("wall_s", 0.0) == 0.0:
        return "no timings recorded yet", "run the job first"
    t = f.timeline
    if t is not None and t.startup_s >= STARTUP_BOUND * (t.startup_s + t.steady_s):
        share = t.startup_s / (t.startup_s + t.steady_s)
        return (
            f"start-up-bound: start-up took {share:.0%} of the run ({t.startup_s:.2f}s before the first shard, "
            f"model set-up {t.setup_s:.2f}s), the steady state {t.steady_s:.2f}s",
            "start-up is paid once per run and per worker: score more rows per run, use fewer workers "
            "(runtime.workers) for a small job; batch settings do not help here",
        )
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
    if f.lanes_busy is not None and f.lanes_busy < LANES_BUSY:
        verdict = f"idle lanes: {f.lanes} lanes busy only {f.lanes_busy:.0%} of their time; {busy}"
        if f.batches < BATCHES_PER_LANE * f.lanes:
            size = max(1, f.rows // (BATCHES_PER_LANE * f.lanes))
            return verdict, (
                f"a batch too large for the job ({f.rows:,} rows in {f.batches} batch(es) for {f.lanes} lanes): "
                f"set batch.size to about {size:,}, or leave it out for the model kind's default"
            )
        return verdict, "calls of uneven cost leave lanes waiting: try a smaller batch (batch.size)"
    if model >= MODEL_BOUND:
        return (
            f"model-bound: model busy {model:.0%} of wall time; {busy}",
            "the input side keeps up: a larger batch (batch.size), more workers or GPUs, or a faster model "
            "(ONNX, quantization) is what helps",
        )
    verdict = f"overhead-bound: model busy only {model:.0%} of wall time and waiting {wait:.0%}; {busy}"
    if f.calls and f.rows / f.calls < SMALL_CALL_ROWS:
        return verdict, "per-batch overhead dominates: try a larger batch (batch.size)"
    return verdict, (
        "time goes between the model's calls, not in them: compare the reader and writer shares above; "
        "more workers (runtime.workers) overlap them"
    )
