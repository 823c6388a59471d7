"""The error policy: which failures are an item's fault, which are worth retrying, which mean "too big",
and which must stop the job.

=========  ==========================================================  ===================================
class      raised as                                                   what the engine does
=========  ==========================================================  ===================================
item       ItemError, or any other exception from the model on a batch  bisect the batch; a row that fails
                                                                       alone is dead-lettered
transient  TransientError (or ``transient = True``), TimeoutError,      retry with exponential backoff and
           ConnectionError                                             jitter; then dead-letter
oom        MemoryError, torch's OutOfMemoryError, an adapter's          split the batch in halves, shrink
           ``is_oom``                                                  the batch size, grow it back later
fatal      any InfermillError that is not an ItemError/TransientError  stop the run; committed work stays
           (model load, output, lease), PermissionError, disk full
input      never raised: a row the source could not read (bad JSON,     dead-letter the row, never call the
           invalid bytes, a value that does not fit its column)         model with it
=========  ==========================================================  ===================================

The class is decided by the exception's type (and an adapter hook for libraries that only have one
exception type for everything), never by matching the user's message text.
"""

from __future__ import annotations

import errno
from typing import Any, Literal

from ..errors import InfermillError, ItemError, TransientError

__all__ = ["ErrorKind", "classify"]

ErrorKind = Literal["item", "transient", "oom", "fatal", "input"]

_OOM_TYPE_NAMES = {"OutOfMemoryError", "OutOfMemoryException"}


def classify(exc: BaseException, adapter: Any = None) -> ErrorKind:
    """Decide how the engine treats ``exc`` raised while scoring a batch."""
    if isinstance(exc, TransientError) or getattr(exc, "transient", False) is True:
        return "transient"
    if isinstance(exc, ItemError):
        return "item"
    if isinstance(exc, InfermillError):
        return "fatal"
    if not isinstance(exc, Exception):
        return "fatal"  # KeyboardInterrupt, SystemExit
    if isinstance(exc, MemoryError) or type(exc).__name__ in _OOM_TYPE_NAMES:
        return "oom"
    hook = getattr(adapter, "classify_error", None)
    if hook is not None:
        verdict: ErrorKind | None = hook(exc)
        if verdict is not None:
            return verdict
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return "transient"
    if isinstance(exc, PermissionError):
        return "fatal"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return "fatal"
    return "item"
