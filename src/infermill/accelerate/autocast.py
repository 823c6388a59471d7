"""``accelerate = "bf16"``: a sentence-transformers model's forward passes in bfloat16 on the CPU.

No conversion and no artifact: each call runs the kind's own ``predict`` under ``torch.autocast("cpu",
dtype=torch.bfloat16)``, so matrix products go to the CPU's bf16 units (AMX or AVX512-BF16), which do about
three times the fp32 work per cycle; the rest (LayerNorm, softmax, pooling) stays in fp32 as autocast's
rules say. The check then compares the embeddings with the fp32 model's by min cosine (0.999 by default), as
for ``onnx``. On a CPU without bf16 units autocast would emulate them and run slower: the method says so and
does not apply.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Accelerator, Built, Metric

if TYPE_CHECKING:
    from ..models.base import ModelAdapter

__all__ = ["Bf16Autocast", "cpu_has_bf16"]

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (``/proc/cpuinfo``) of units that compute bf16 products natively."""


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 products natively (Linux: its flags; elsewhere: assumed not)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


class Bf16Autocast(Accelerator):
    """Kind "sentence-transformers" on the CPU, its forward passes under bf16 autocast."""

    method: ClassVar[str] = "bf16"
    metric: ClassVar[Metric] = "min_cosine"
    default_bound: ClassVar[float] = 0.999

    def unavailable(self, adapter: ModelAdapter) -> str | None:
        from ..models.sentence_transformers_model import SentenceModel

        if not isinstance(adapter, SentenceModel):
            return f"'bf16' runs kind 'sentence-transformers' models, not kind '{adapter.kind}'"
        if adapter.model is None or adapter.device is None:
            return "the model is not loaded (setup() has not run)"
        if str(adapter.device) != "cpu":
            return f"'bf16' is for the CPU; this model runs on {adapter.device}"
        if adapter.settings.dtype != "float32":
            return f"'bf16' starts from a float32 model; this one is loaded as {adapter.settings.dtype}"
        if not cpu_has_bf16():
            return "this CPU has no bf16 units (amx_bf16 or avx512_bf16): bf16 would be emulated and slower"
        return None

    def build(self, adapter: ModelAdapter, cache_dir: Path) -> Built:
        import torch

        started = time.perf_counter()
        inner = adapter.predict

        def predict(inputs: Any) -> Any:
            # Autocast's state is per thread: entered on the calling lane, for this call only.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return inner(inputs)

        return Built(predict=predict, artifact=None, build_seconds=time.perf_counter() - started, cache_hit=False)

    def agreement(self, original: Any, accelerated: Any) -> float:
        """The lowest cosine similarity between a row's fp32 and bf16 embedding."""
        from .onnx_encoder import cosines

        values = cosines(original, accelerated)
        return float(values.min()) if len(values) else 1.0
