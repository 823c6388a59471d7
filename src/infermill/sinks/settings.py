"""The ``[output]`` keys of the built-in formats, beyond the common ones of :class:`~infermill.spec.OutputSpec`.

Each format registers its dataclass (``registry`` meta ``settings``); the job spec checks a format's keys
against it while it is built. This module imports nothing heavy, so building a spec imports no sink.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ParquetSettings"]


@dataclass(frozen=True)
class ParquetSettings:
    """The ``[output]`` keys of ``format = "parquet"``."""

    compression: str | None = None
    """The Parquet compression codec: snappy (default), zstd, gzip, brotli, lz4 or none."""
