"""Which allocator Arrow uses while workers run.

Arrow's default allocator since pyarrow 13, mimalloc, hands a freed block of megabytes back to the OS
within milliseconds. A worker frees a batch's decoded columns and soon decodes the next batch of the
same size, into fresh pages that the kernel must zero first. jemalloc, which pyarrow also ships, keeps
freed pages for a while and hands them out again. In the tabular benchmark (2M rows, 2 cores), a run
took about 180 huge-page faults with mimalloc and about 90 with jemalloc; with the feature matrices
reused as well (``models/_columns.MatrixPool``), about 60 (docs/throughput.md).

So while at least one worker of this process runs, Arrow's default pool is jemalloc, and it goes back
to what it was when the last one ends. A buffer remembers the pool it came from, so buffers allocated
before, during or after are all freed correctly. The pool is left alone when the user chose one
(``ARROW_DEFAULT_MEMORY_POOL``, or a pool other than mimalloc set in code), and where this pyarrow build
has no jemalloc.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

__all__ = ["reusing_arrow_memory"]

_lock = threading.Lock()
_holders = 0
_saved: pa.MemoryPool | None = None
"""The pool to restore, while this module has replaced it; None otherwise."""


def _jemalloc() -> pa.MemoryPool | None:
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return None
    if pa.default_memory_pool().backend_name != "mimalloc":
        return None
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # built without jemalloc
        return None


@contextmanager
def reusing_arrow_memory() -> Iterator[None]:
    """Make Arrow allocate from jemalloc inside the block (see the module docstring); re-entrant and
    safe for several workers of one process, which share one switch.

    >>> with reusing_arrow_memory():                      # doctest: +SKIP
    ...     run_the_worker()
    """
    global _holders, _saved
    with _lock:
        if _holders == 0:
            pool = _jemalloc()
            if pool is not None:
                _saved = pa.default_memory_pool()
                pa.set_memory_pool(pool)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _saved is not None:
                pa.set_memory_pool(_saved)
                _saved = None
