"""Result sinks: one output file per shard and attempt, staged then moved into place atomically."""

from __future__ import annotations

from .base import (
    ERRORS_DIR,
    MANIFEST_NAME,
    OWNER_NAME,
    STAGING_DIR,
    CommittedFile,
    OwnerRecord,
    ShardWriter,
    Sink,
    StagedFile,
    attempt_name,
    open_sink,
)

__all__ = [
    "ERRORS_DIR",
    "MANIFEST_NAME",
    "OWNER_NAME",
    "STAGING_DIR",
    "CommittedFile",
    "OwnerRecord",
    "ShardWriter",
    "Sink",
    "StagedFile",
    "attempt_name",
    "open_sink",
]
