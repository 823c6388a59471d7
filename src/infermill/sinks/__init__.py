"""Result sinks: the contract (:class:`Sink`) and the folder-of-files sink behind every file format.

The names below are imported on first use: the contract imports pyarrow, and importing this package (for
``sinks.settings``, say) must not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name == "FileSink":
        from .files import FileSink

        return FileSink
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
