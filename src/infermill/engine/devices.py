"""Which workers a run starts, and the GPU each one is pinned to (``[runtime] devices``).

The coordinator never imports torch to find the GPUs: it reads ``CUDA_VISIBLE_DEVICES`` when set, else
asks ``nvidia-smi -L``, else counts ``/proc/driver/nvidia/gpus/``, and only asks ``torch.cuda`` when torch
is already imported. A GPU worker's process sets ``CUDA_VISIBLE_DEVICES`` to its one device before any
CUDA library starts, so inside it the GPU is always ``cuda:0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..errors import SpecError
from ..spec import JobSpec

__all__ = ["WorkerSlot", "detect_gpus", "model_uses_gpu", "plan_workers"]

_PROC_GPUS = "/proc/driver/nvidia/gpus"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker of the run."""

    worker_id: int
    threads: int
    """Intra-op threads of its model."""
    gpu: str | None = None
    """The CUDA device it is pinned to (its ``CUDA_VISIBLE_DEVICES``), or None for no pinning."""


def _visible_from_env(value: str) -> list[str]:
    # CUDA stops at the first invalid entry; "-1" (or an empty value) is the usual way to hide every GPU.
    out: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def _count_nvidia_smi() -> int | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


def _count_proc() -> int | None:
    try:
        return len(os.listdir(_PROC_GPUS))
    except OSError:
        return None


def detect_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (``["0", "1"]``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return _visible_from_env(env)
    count = _count_nvidia_smi()
    if count is None:
        count = _count_proc()
    if count is None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    return [str(i) for i in range(count or 0)]


def model_uses_gpu(spec: JobSpec) -> bool:
    """True when the model kind runs on a GPU when there is one, and its ``device`` key lets it choose."""
    from .. import registry
    from ..models import adapter_class

    if registry.find("models", spec.model.kind) is None:
        return False
    try:
        cls = adapter_class(spec.model.kind)
    except ImportError:
        return False
    # "cuda:N" names one GPU of the unpinned set; pinning each worker to one device would hide it.
    return cls.uses_gpu and spec.model.settings.get("device", "auto") in ("auto", "cuda")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _gpus(spec: JobSpec) -> list[str]:
    devices = spec.runtime.devices
    if devices == "cpu":
        return []
    if devices == "auto":
        return detect_gpus() if model_uses_gpu(spec) else []
    wanted = [str(i) for i in devices]
    visible = detect_gpus()
    missing = [d for d in wanted if d not in visible]
    if visible and missing:
        raise SpecError(
            f"'runtime.devices' lists GPU {missing[0]}, but the visible GPUs are {', '.join(visible)}",
            hint='list visible GPU indexes, or use devices = "auto"',
        )
    return wanted


def plan_workers(spec: JobSpec, shards: int) -> list[WorkerSlot]:
    """The workers to start for ``shards`` shards (never more workers than shards, at least one).

    On GPUs, replicas are dealt round-robin over the devices, so a run with few shards still spreads
    over the GPUs. Threads per worker default to the CPU cores shared out between all planned workers.
    """
    gpus = _gpus(spec)
    if gpus:
        slots: list[str | None] = [g for _ in range(spec.runtime.replicas_per_device) for g in gpus]
    else:
        slots = [None] * spec.runtime.workers
    threads = spec.runtime.threads_per_worker or max(1, _cores() // len(slots))
    count = min(len(slots), max(1, shards))
    return [WorkerSlot(worker_id=i, threads=threads, gpu=slots[i]) for i in range(count)]
