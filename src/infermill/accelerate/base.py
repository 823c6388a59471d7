"""The accelerator contract, and the artifact cache every accelerator shares.

An :class:`Accelerator` converts one loaded model (a set-up ``ModelAdapter``) into a faster callable with the
same input and output contract as ``adapter.predict``. It is never trusted blindly: ``accelerate.verify``
scores a sample of the job's rows with both and keeps the accelerated one only when ``agreement`` is
within the bound. Converted artifacts live in a cache folder keyed by the model fingerprint, the method,
the converter versions and the CPU architecture (:func:`artifact_path`), written once by one process
(:func:`build_once`) and loaded by every later worker and run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from ..models.base import ModelAdapter

__all__ = ["Accelerator", "Built", "Metric", "artifact_path", "build_once", "cache_lock"]

Metric = Literal["max_abs_diff", "min_cosine"]


@dataclass(frozen=True)
class Built:
    """An accelerated model, ready to score."""

    predict: Callable[[Any], Any]
    """Same input and output contract as ``adapter.predict(inputs)``."""
    artifact: str | None
    """Path of the converted model in the cache (None: nothing on disk)."""
    build_seconds: float
    """Conversion time; 0.0 when loaded from the cache."""
    cache_hit: bool
    """The artifact was found in the cache (built by an earlier run or another worker)."""


class Accelerator(ABC):
    """One way to make a model kind faster (``[model] accelerate = <method>``)."""

    method: ClassVar[str]
    """The ``[model] accelerate`` value that selects it: "compile", "onnx" or "onnx-int8"."""
    metric: ClassVar[Metric]
    """How accelerated and original results are compared: "max_abs_diff" (lower is better) or
    "min_cosine" (higher is better)."""
    default_bound: ClassVar[float]
    """The bound ``agreement`` must meet unless ``[model] accelerate_tolerance`` overrides it."""

    def unavailable(self, adapter: ModelAdapter) -> str | None:
        """None when this accelerator applies to the (set-up) adapter; else why not, in words a user can act
        on (a missing package with the ``pip install`` to run, an unsupported model type...)."""
        return None

    @abstractmethod
    def build(self, adapter: ModelAdapter, cache_dir: Path) -> Built:
        """Convert the set-up adapter's model, or load the conversion from ``cache_dir`` (see
        :func:`artifact_path` and :func:`build_once`)."""

    @abstractmethod
    def agreement(self, original: Any, accelerated: Any) -> float:
        """The metric over one sample: ``original`` and ``accelerated`` are two ``predict`` results."""

    def passes(self, value: float, bound: float) -> bool:
        """Whether ``value`` of the metric is within ``bound``, by the metric's direction."""
        if value != value:  # NaN never passes
            return False
        return value <= bound if self.metric == "max_abs_diff" else value >= bound


def artifact_path(
    cache_dir: Path, fingerprint: str, method: str, versions: Mapping[str, str], suffix: str = ""
) -> Path:
    """Where the artifact of ``method`` for a model with ``fingerprint`` lives in ``cache_dir``.

    The key holds everything that makes an artifact unusable elsewhere: the model, the method, the
    converter versions (``{"treelite": "4.8.1", ...}``) and the CPU architecture and OS (native code)."""
    parts = [fingerprint, method, *(f"{k}={versions[k]}" for k in sorted(versions))]
    parts += [platform.machine(), platform.system()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return cache_dir / f"{method}-{key}{suffix}"


@contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``target`` (a lock file next to it): two workers of one job that
    start at once build it once; the second waits, then finds it built. The lock is released by the OS if the
    holder dies."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_once(target: Path, make: Callable[[Path], None]) -> bool:
    """Make ``target`` unless it exists: ``make(tmp)`` writes a file or folder at ``tmp``, which is renamed onto
    ``target`` atomically, under :func:`cache_lock`. Returns True when ``target`` was already there (a cache
    hit), False when this call built it. A failed or killed build leaves no ``target`` behind."""
    if target.exists():
        return True
    with cache_lock(target):
        if target.exists():  # built by another worker while this one waited for the lock
            return True
        with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as scratch:
            tmp = Path(scratch) / target.name
            make(tmp)
            os.replace(tmp, target)
    return False
