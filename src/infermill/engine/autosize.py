"""``[batch] size = "auto"``: probe batch sizes on real input and keep the best one that fits memory.

Sizes double from ``START`` while the device has room: each probe scores a batch of real rows, measuring
rows/s and the memory the call needed (GPU memory through torch when the model runs on CUDA, the
process's peak RSS otherwise). The search stops at the first size over ``batch.memory_fraction`` of the
device's memory, or once doubling no longer improves throughput by ``MIN_GAIN``; the choice is the
fastest size probed that fit (the larger one on a tie). The result is cached in the ledger per model
fingerprint, hardware and feature schema, so later runs skip the probe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import InputError
from ..ledger import Ledger
from ..sources.base import readable_rows
from ..spec import JobSpec, default_batch_rows, default_sort_window

__all__ = ["MIN_GAIN", "Probe", "choose_batch_size", "measure_call", "resolve_batch_size"]

START = 32
MAX_SIZE = 65_536
MIN_GAIN = 0.05
"""Doubling the batch must add this much throughput to be worth it."""
REPEATS = 2


@dataclass(frozen=True)
class Probe:
    size: int
    rows_per_s: float
    memory: int
    """Bytes the call needed beyond what was in use before it."""


def choose_batch_size(
    measure: Callable[[int], Probe], *, memory_limit: int, start: int = START, max_size: int = MAX_SIZE
) -> tuple[int, list[Probe]]:
    """The batch size to use and the probes behind it. ``measure(size)`` scores one batch of ``size``
    rows (and may raise MemoryError, which ends the search like an over-budget probe)."""
    probes: list[Probe] = []
    best: Probe | None = None
    size = start
    while size <= max_size:
        try:
            probe = measure(size)
        except MemoryError:
            break
        probes.append(probe)
        if probe.memory > memory_limit:
            break
        improved = best is None or probe.rows_per_s >= best.rows_per_s * (1 + MIN_GAIN)
        if best is None or probe.rows_per_s >= best.rows_per_s:
            best = probe
        if not improved:
            break
        size *= 2
    if best is None:
        return start, probes  # even the smallest probe did not fit: start small, OOM splits go lower
    return best.size, probes


def _rss_peak() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_call(adapter: Any, rows: pa.RecordBatch, features: list[str], size: int, cuda: Any = None) -> Probe:
    """Score ``size`` rows (the sample repeated as needed) ``REPEATS`` times; the best time counts."""
    reps = -(-size // rows.num_rows)
    batch = pa.Table.from_batches([rows] * reps).slice(0, size).combine_chunks().to_batches()[0]
    inputs = adapter.preprocess(batch.select(features))
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
        before = cuda.memory_allocated()
    else:
        before = _rss_peak()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        adapter.postprocess(adapter.predict(inputs), size)
        if cuda is not None:
            cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    used = (cuda.max_memory_allocated() - before) if cuda is not None else max(0, _rss_peak() - before)
    return Probe(size=size, rows_per_s=size / best if best > 0 else float("inf"), memory=int(used))


def _device_memory(cuda: Any) -> int:
    if cuda is not None:
        return int(cuda.get_device_properties(cuda.current_device()).total_memory)
    import psutil

    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)


def _cuda_for(adapter: Any) -> Any:
    """torch.cuda when the adapter runs its model on a GPU, else None."""
    device = str(getattr(adapter, "device", "") or getattr(adapter, "assigned_device", "") or "")
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda


def cache_key(spec: JobSpec, model_fingerprint: str, schema: pa.Schema) -> str:
    """Model, hardware and feature shape: what the best batch size depends on."""
    hardware = [platform.machine(), os.cpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES", "")]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        hardware.append(torch.cuda.get_device_name(0))
    blob = json.dumps([model_fingerprint, hardware, str(schema), spec.runtime.workers, spec.runtime.threads_per_worker])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_batch_size(
    spec: JobSpec,
    *,
    ledger: Ledger,
    sample: Callable[[], pa.RecordBatch | None],
    features: list[str],
    schema: pa.Schema,
    make_adapter: Callable[[], Any],
    model_fingerprint: str,
) -> tuple[JobSpec, str]:
    """``spec`` with ``batch.size`` made concrete, and a line saying how it was chosen."""
    if spec.batch.size is None:
        return _with_default_size(spec, len(features)), ""
    if spec.batch.size != "auto":
        return spec, ""
    key = cache_key(spec, model_fingerprint, schema)
    cached = ledger.cached_batch_size(key)
    if cached is not None:
        return _with_size(spec, cached), f"batch size {cached:,} (auto, cached)"
    rows = sample()
    if rows is not None:
        rows = readable_rows(rows)  # probes time the model on rows it would score
    if rows is None or rows.num_rows == 0:
        raise InputError(f"the input ({spec.input.path}) has no rows to size batches with")
    adapter = make_adapter()
    adapter.setup()
    try:
        cuda = _cuda_for(adapter)
        limit = int(_device_memory(cuda) * spec.batch.memory_fraction)
        size, probes = choose_batch_size(
            lambda n: measure_call(adapter, rows, features, n, cuda), memory_limit=limit
        )
    finally:
        adapter.close()
    ledger.cache_batch_size(key, size, [dataclasses.asdict(p) for p in probes])
    fastest = max(probes, key=lambda p: p.rows_per_s) if probes else None
    detail = f", {fastest.rows_per_s:,.0f} rows/s in the probe" if fastest else ""
    return _with_size(spec, size), f"batch size {size:,} (auto: probed {len(probes)} sizes{detail})"


def _with_default_size(spec: JobSpec, features: int) -> JobSpec:
    """The kind's default batch size, and its default sort window unless one is set."""
    kind = spec.model.kind
    window = spec.batch.sort_window if spec.batch.sort_window is not None else default_sort_window(kind)
    batch = dataclasses.replace(spec.batch, size=default_batch_rows(kind, features), sort_window=window)
    return dataclasses.replace(spec, batch=batch)


def _with_size(spec: JobSpec, size: int) -> JobSpec:
    return dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, size=size))
