"""Result sinks: one output file per shard, staged then moved into place atomically."""

from __future__ import annotations

from .base import ERRORS_DIR, MANIFEST_NAME, STAGING_DIR, ShardWriter, Sink, StagedFile, open_sink

__all__ = ["ERRORS_DIR", "MANIFEST_NAME", "STAGING_DIR", "ShardWriter", "Sink", "StagedFile", "open_sink"]
