"""Shared plumbing for the benchmarks beside bench_tabular.py: child processes, best-of-N, targets, results.

Every measurement runs in a fresh interpreter (the calling script with ``--child KIND``), after waiting for
a quiet machine, exactly as bench_tabular.py does; the quiet-machine helpers are bench_tabular's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_tabular as tabular

Target = tuple[str, float, str, bool]


def spawn(script: str, kind: str, **options: Any) -> dict[str, Any]:
    """Run ``script --child kind --key value ...`` in a fresh interpreter; return its JSON result.

    Adds ``others_cores`` (cores other processes used meanwhile) and ``rows_per_s``.
    """
    argv = [sys.executable, str(Path(script).resolve()), "--child", kind]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    quiet_before = tabular.wait_for_quiet(tabular.QUIET_WAIT_S)
    busy, own, started = tabular._machine_busy(), tabular._own_cpu(), time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child '{kind}' failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    after = tabular._machine_busy()
    if busy is not None and after is not None:
        others = max(0.0, (after - busy) - (tabular._own_cpu() - own))
        result["others_cores"] = round(others / (time.monotonic() - started), 2)
    result["others_cores_before"] = quiet_before
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with every run's seconds and other-process load kept alongside."""
    fastest = dict(min(results, key=lambda r: r["seconds"]))
    fastest["all_seconds"] = [round(r["seconds"], 3) for r in results]
    fastest["all_others_cores"] = [r.get("others_cores") for r in results]
    return fastest


def infermill_child(job: str) -> dict[str, Any]:
    """One ``infermill.engine.run`` of ``job``, timed. As in bench_tabular, import time (the same for every
    contender) is not what is measured: ``timed_infermill_run`` imports the run's modules before the clock.
    """
    return tabular.timed_infermill_run(job)


def has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


RAY_MISSING = "Ray Data is not installed: skipping the Ray leg (pip install -e '.[bench]' to run it)"


def ray_init() -> float:
    """Start a local Ray instance with two CPUs; return the seconds it took (reported, never counted)."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return time.perf_counter() - started


def one_actor() -> dict[str, Any]:
    """``map_batches`` keywords for a pool of exactly one actor (``concurrency=1``; ``compute=`` since Ray 2.51)."""
    import ray.data

    if hasattr(ray.data, "ActorPoolStrategy"):
        return {"compute": ray.data.ActorPoolStrategy(size=1)}
    return {"concurrency": 1}


def machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "loadavg": round(os.getloadavg()[0], 2),
    }


def rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


def target_lines(found: list[Target]) -> list[str]:
    lines = ["", "targets"]
    for name, value, target, ok in found:
        lines.append(f"  {name:<52}{value:>8.3f}  (target {target})  {'PASS' if ok else 'FAIL'}")
    return lines


def save(results_dir: Path, name: str, summary: dict[str, Any], text: str) -> None:
    print()
    print(text)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nresults: {out}")


def add_tabular_args(parser: argparse.ArgumentParser) -> None:
    """The tabular data set's options: rows, features and the batch size (default: infermill's)."""
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default: infermill's default for the model kind")


def add_common_args(parser: argparse.ArgumentParser, children: list[str], hidden: tuple[str, ...]) -> None:
    """Seed, data and results folders, and the hidden options a ``--child`` measurement receives."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=tabular.BENCH_DIR / "data")
    parser.add_argument("--results-dir", type=Path, default=tabular.BENCH_DIR / "results")
    parser.add_argument("--child", choices=sorted(children), help=argparse.SUPPRESS)
    for name in hidden:
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)


def default_batch_size(args: argparse.Namespace, kind: str) -> None:
    """``--batch-size`` left out: infermill's default batch size for a model of ``kind``."""
    if args.batch_size is None:
        from infermill.spec import default_batch_rows

        args.batch_size = default_batch_rows(kind, getattr(args, "features", 1))


class GpuSampler:
    """GPU 0's utilisation and memory, as ``nvidia-smi`` shows them (NVML), sampled while in a ``with`` block.

    NVML's utilisation is the share of its last sample period (1/6 s to 1 s, by GPU) in which a kernel ran,
    so a run of a few seconds gets only a handful of independent readings. Without NVML (no GPU, or
    ``nvidia-ml-py`` missing) ``summary()`` is None.
    """

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval = interval
        self.utilisation: list[int] = []
        self.memory_used = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def __enter__(self) -> GpuSampler:
        import threading

        self._handle = _nvml_gpu0()
        if self._handle is None:  # no NVML here: nothing to sample
            return self
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        import pynvml

        while not self._stop.wait(self.interval):
            self.utilisation.append(int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            self.memory_used = max(self.memory_used, int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any] | None:
        if not self.utilisation:
            return None
        u = self.utilisation
        return {"util_mean": round(sum(u) / len(u), 1), "util_median": sorted(u)[len(u) // 2], "util_max": max(u),
                "samples": len(u), "memory_used_max_mib": round(self.memory_used / 2**20)}


def _nvml_gpu0() -> Any:
    """NVML's handle of GPU 0, or None (no GPU, no driver, or ``nvidia-ml-py`` missing)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:
        return None


def gpu_name() -> str | None:
    """GPU 0's name through NVML, or None."""
    handle = _nvml_gpu0()
    if handle is None:
        return None
    import pynvml

    name = pynvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)
