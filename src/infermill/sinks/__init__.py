"""Result sinks: the contract (:class:`Sink`) and the folder-of-files sink behind every file format."""

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
from .files import FileSink

__all__ = [
    "ERRORS_DIR",
    "MANIFEST_NAME",
    "OWNER_NAME",
    "STAGING_DIR",
    "CommittedFile",
    "FileSink",
    "OwnerRecord",
    "ShardWriter",
    "Sink",
    "StagedFile",
    "attempt_name",
    "open_sink",
]
