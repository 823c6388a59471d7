"""``[model] accelerate``: convert a model to a faster runtime, verified against the original.

Light on purpose (no numpy, no converter import): ``base`` holds the contract, ``verify`` the decision
(build, compare on a sample of the job's own rows, use or fall back), and one module per method family
(``trees``: tree ensembles through treelite + tl2cgen; ``onnx_encoder``: transformer encoders through
ONNX Runtime; ``autocast``: bf16 forward passes on the CPU). A model kind offers its accelerators
through ``ModelAdapter.accelerators()``.
"""

from __future__ import annotations

METHODS = ("off", "auto", "compile", "onnx", "onnx-int8", "bf16")
"""The values of ``[model] accelerate``."""

__all__ = ["METHODS"]
