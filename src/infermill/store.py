"""Calls to object stores (S3 and any fsspec store), retried with backoff when the store fails in a way
that passes: a 5xx answer, SlowDown or other throttling, a connection dropped or reset (also in the middle
of a response body), a timeout.

Every call infermill makes to a store goes through :func:`retrying` (listing, metadata, writing, deleting)
or, for reading a file, through :class:`RetryingFile` (a dropped read is resumed where it stopped, from a
freshly opened file). Retries are bounded (:class:`RetryPolicy`); when they run out the call raises
:class:`~infermill.errors.StorageError`, which is transient: committed work is kept and a rerun resumes.
Anything else (a missing key, a denied permission, a bad request) is raised at once, unchanged.

Retrying is safe because every write infermill makes is idempotent by name: a shard's result goes to a
key of its own shard and attempt, so a PUT whose answer was lost, sent again, writes the same bytes to
the same key; a delete of a key already gone is no error; the ledger, not the store, decides what is
committed. The filesystem's own retries (s3fs, botocore) still run first; this layer bounds the whole.

This module imports no store library: errors are told apart by their class names and HTTP status, so it
works for any fsspec backend.
"""

from __future__ import annotations

import contextlib
import errno
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .backoff import full_jitter
from .errors import StorageError

__all__ = ["DEFAULT_POLICY", "RetryPolicy", "RetryingFile", "is_transient", "retrying"]

T = TypeVar("T")

_TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED,
        errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH, getattr(errno, "EREMOTEIO", None),
    )
    if code is not None
)
"""OSError codes of a store that may answer next time (s3fs maps SlowDown and 503 to EBUSY, 500 to EREMOTEIO)."""

_TRANSIENT_NAMES = frozenset({
    # aiohttp (s3fs, gcsfs, adlfs, http): connections dropped, bodies cut short
    "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
    "ServerTimeoutError", "ClientConnectorError",
    # botocore: every connection-level failure derives from HTTPClientError; bodies cut short
    "HTTPClientError", "IncompleteReadError", "ResponseStreamingError", "ResponseParserError",
    # fsspec, http.client, urllib3, requests
    "FSTimeoutError", "IncompleteRead", "RemoteDisconnected", "ProtocolError", "ChunkedEncodingError",
})
"""Exception classes (by name, anywhere in the class's MRO) that mean the connection, not the request, failed."""

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "503", "500", "502", "504",
})
"""Error codes in a store's answer (S3's ``<Code>``) that say: try again later."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a store call is retried."""

    attempts: int = 6
    """Tries in all, the first included."""
    base_s: float = 0.2
    """Backoff before the first retry, at most (full jitter; it doubles with each retry)."""
    cap_s: float = 5.0
    """Longest backoff between two tries."""


DEFAULT_POLICY = RetryPolicy()
_rng = random.Random()


def is_transient(exc: BaseException) -> bool:
    """Whether a store call that raised ``exc`` may succeed if made again. Looks through the exception's
    causes (s3fs raises an OSError whose ``__cause__`` is botocore's error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_here(current):
            return True
        if isinstance(current, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        current = current.__cause__ or current.__context__
    return False


def _transient_here(exc: BaseException) -> bool:
    if isinstance(exc, StorageError):
        return False  # already retried to the end
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        if code in _TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
            return True
    for attr in ("status_code", "status", "code"):  # gcsfs HttpError, azure, aiohttp ClientResponseError
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and (500 <= value < 600 or value == 429):
            return True
    return False


def retrying(
    what: str,
    call: Callable[[], T],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, made again after a transient failure (:func:`is_transient`) with backoff, at most
    ``policy.attempts`` times in all; then :class:`StorageError`, naming ``what`` (no credentials in it).

    >>> retrying("list s3://bucket/in/", lambda: fs.find("bucket/in/"))  # doctest: +SKIP
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt >= policy.attempts:
                raise StorageError(
                    f"the store kept failing: {what}: {type(exc).__name__}: {exc} "
                    f"({policy.attempts} tries with backoff)",
                    hint="the store is throttling or unreachable; committed shards are kept: rerun "
                    "`infermill run JOB` once it answers again, and it resumes",
                ) from exc
            sleep(full_jitter(attempt, policy.base_s, policy.cap_s, _rng))
            attempt += 1


class RetryingFile(io.RawIOBase):
    """A file of a store opened for reading whose reads survive a dropped connection: on a transient error
    the file is opened again and read from where the failed read started, with backoff, as
    :func:`retrying` does. Arrow and the line readers use it like any binary file.

    ``opener`` opens the file afresh (``lambda: fs.open(path, "rb")``); ``what`` names it in errors.
    """

    def __init__(self, opener: Callable[[], Any], what: str, *, policy: RetryPolicy = DEFAULT_POLICY) -> None:
        super().__init__()
        self._opener = opener
        self._what = what
        self._policy = policy
        self._pos = 0
        self._inner: Any = None
        self._inner = retrying(f"open {what}", opener, policy=policy)

    @property
    def size(self) -> Any:
        return getattr(self._inner, "size", None)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._call("seek", lambda inner: int(inner.seek(offset, whence)))
        return self._pos

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._call("read", lambda inner: inner.read(size))
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            inner, self._inner = self._inner, None
            if inner is not None:
                try:
                    inner.close()
                except Exception as exc:  # closing a file opened for reading loses nothing
                    if not is_transient(exc):
                        raise
        super().close()

    def _call(self, op: str, fn: Callable[[Any], T]) -> T:
        start = self._pos

        def once() -> T:
            if self._inner is None:
                self._inner = self._opener()
                if start:
                    self._inner.seek(start)
            try:
                return fn(self._inner)
            except Exception as exc:
                if is_transient(exc):
                    # The connection under it is gone, and the file's buffer may hold half an answer.
                    inner, self._inner = self._inner, None
                    with contextlib.suppress(Exception):  # a broken file's close has nothing to say
                        inner.close()
                raise

        return retrying(f"{op} {self._what} at byte {start}", once, policy=self._policy)
