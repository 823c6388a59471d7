"""Device, dtype, threads and error handling shared by the torch-based kinds (torch, hf,
sentence-transformers). Nothing here imports torch at module level; callers pass the module in.

``device`` rule:

* ``cpu``: the CPU.
* ``auto`` (default): like ``cuda`` when ``torch.cuda.is_available()``, else the CPU.
* ``cuda``: a GPU, required. Worker *i* of a multi-process run (``runtime.workers``) takes
  ``cuda:(i % device_count)``, so workers spread over the visible GPUs; one worker takes ``cuda:0``.
  Limit the GPUs with ``CUDA_VISIBLE_DEVICES``.
* ``cuda:N``: that GPU, for every worker.

The worker's index comes from its process name (``infermill-worker-<i>``, set by the process
executor); any other process counts as worker 0. A worker pinned to one GPU by ``[runtime] devices``
(``CUDA_VISIBLE_DEVICES``) sees a single device, so ``auto`` and ``cuda`` give it ``cuda:0``.
"""

from __future__ import annotations

import multiprocessing
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ModelLoadError
from .base import ModelAdapter
from .settings import DTypeName, ParallelName

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "DTypeName",
    "ParallelName",
    "TorchAdapter",
    "check_device",
    "classify_torch_error",
    "import_torch",
    "no_progress_bars",
    "quiet",
    "select_device",
    "to_device",
    "to_numpy",
    "torch_dtype",
    "worker_index",
]

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
_WORKER = re.compile(r"^infermill-worker-(\d+)$")
_DEVICE_HINT = 'use device = "auto" (a GPU when there is one, else the CPU), "cpu", "cuda" or "cuda:N"'


class TorchAdapter(ModelAdapter):
    """Base of the torch-based kinds: CPU lanes by their ``parallel`` key.

    ``parallel = "batches"`` on the CPU with ``threads`` > 1: the engine scores ``threads`` batches at once,
    each call with torch at one intra-op thread: no OpenMP threads waiting for each other at every operator,
    or for another thread (the reader's tokenizer) that took one's core. ``"library"``: one call at a time
    with torch's ``threads`` intra-op threads. On a GPU there is one call at a time either way.
    Outside the engine's lanes (retry, batch-size probes) calls use ``threads`` intra-op threads.
    """

    result_neutral_settings = frozenset({"parallel"})
    device: torch.device | None = None
    """The torch device, after setup()."""

    def lanes(self) -> int:
        parallel: str = getattr(self.settings, "parallel", "library")
        if parallel != "batches" or self.device is None or self.device.type != "cpu":
            return 1
        return self.threads

    def enter_lane(self) -> None:
        # torch's thread count is per calling thread (OpenMP and MKL keep one each): this lane's only.
        import_torch(self.kind).set_num_threads(1)

    @contextmanager
    def lanes_running(self, lanes: int) -> Iterator[None]:
        if lanes <= 1:
            yield
            return
        torch = import_torch(self.kind)
        # A thread's first parallel call takes the process-wide count: one, while the lanes run.
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def import_torch(kind: str) -> Any:
    """``import torch``, or the ModelLoadError that names the extra to install."""
    from . import missing_extra

    try:
        import torch
    except ImportError as exc:
        raise missing_extra(kind, "torch") from exc
    return torch


def check_device(value: str, kind: str) -> None:
    """Reject a malformed ``device`` early (before any model is loaded)."""
    if not _DEVICE.match(value):
        raise ModelLoadError(f"invalid device {value!r} for kind '{kind}' (from 'model.device')", hint=_DEVICE_HINT)


def worker_index() -> int:
    """This worker's index in a multi-process run (0 elsewhere)."""
    match = _WORKER.match(multiprocessing.current_process().name)
    return int(match.group(1)) if match else 0


def select_device(name: str, lib: Any, worker: int | None = None) -> torch.device:
    """The ``torch.device`` for the ``device`` setting (see the module docstring)."""
    cpu: torch.device = lib.device("cpu")
    if name == "cpu":
        return cpu
    available = bool(lib.cuda.is_available())
    if name == "auto" and not available:
        return cpu
    if not available:
        built = getattr(lib.version, "cuda", None)
        why = "this torch build has no CUDA support" if built is None else "no GPU is visible to this process"
        raise ModelLoadError(
            f"device {name!r} needs a CUDA GPU, but {why} (torch {lib.__version__})",
            hint='use device = "auto" to fall back to the CPU, or run where a GPU and a CUDA build of torch are',
        )
    count = int(lib.cuda.device_count())
    if name in ("auto", "cuda"):
        index = (worker_index() if worker is None else worker) % max(count, 1)
    else:
        index = int(name.partition(":")[2])
        if index >= count:
            raise ModelLoadError(
                f"device {name!r} does not exist: {count} GPU(s) are visible (cuda:0 to cuda:{count - 1})",
                hint='use device = "cuda" to spread workers over the visible GPUs, or check CUDA_VISIBLE_DEVICES',
            )
    gpu: torch.device = lib.device("cuda", index)
    return gpu


def torch_dtype(name: str, lib: Any) -> torch.dtype:
    """The torch dtype for the ``dtype`` setting."""
    dtype: torch.dtype = getattr(lib, name)
    return dtype


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of ``batch`` to ``device`` (asynchronously from pinned memory)."""
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if hasattr(v, "to") and hasattr(v, "device") else v
        for k, v in batch.items()
    }


def pin(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Page-lock CPU tensors bound for a GPU, so the copy overlaps the previous batch's compute."""
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in batch.items()}


def to_numpy(tensor: Any) -> Any:
    """A tensor as a CPU numpy array; float16 and bfloat16 become float32 (Arrow and Parquet readers
    handle those poorly, and numpy has no bfloat16)."""
    import torch

    t = tensor.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.cpu().numpy()


def classify_torch_error(exc: BaseException) -> Literal["oom", "fatal"] | None:
    """Out of GPU memory -> ``oom`` (the engine splits the batch); a CUDA error such as a device-side
    assert -> ``fatal`` (the CUDA context is unusable after one). None: the default policy decides."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return "oom"
    accelerator = getattr(torch, "AcceleratorError", None)
    if accelerator is not None and isinstance(exc, accelerator):
        return "fatal"
    return None


def release_cached_memory(device: torch.device | None) -> None:
    """Give the CUDA caching allocator's free blocks back after an OOM, so the split batch fits."""
    if device is None or device.type != "cuda":
        return
    import torch

    torch.cuda.empty_cache()


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights") for the block: they would garble the run's
    own progress display."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        yield
        return
    logging: Any = transformers_logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@contextmanager
def quiet(*messages: str) -> Iterator[None]:
    """Silence the named library warnings (regexes of their message start) for the block only."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield
