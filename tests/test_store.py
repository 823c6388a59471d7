"""infermill.store: which store errors are retried, how often, and reads that resume after a dropped
connection. (End to end against S3 through a faulty proxy: tests/test_s3_faults.py.)"""

from __future__ import annotations

import errno
import io
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infermill.errors import StorageError, TransientError
from infermill.store import RetryingFile, RetryPolicy, is_transient, retrying

FAST = RetryPolicy(attempts=4, base_s=0.0, cap_s=0.0)


class ClientPayloadError(Exception):
    """Named as aiohttp's: a response body cut short."""


class ClientError(Exception):
    """Shaped as botocore's: the store's answer in ``response``."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{code} ({status})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _translated(cause: BaseException, err: int = errno.EIO) -> OSError:
    """As s3fs raises a store's answer: an OSError whose cause is the client's error."""
    exc = OSError(err, "translated")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError("read timed out"), True),
        (OSError(errno.EBUSY, "SlowDown"), True),  # s3fs's SlowDown and 503
        (ClientPayloadError("payload not completed"), True),
        (ClientError(503, "SlowDown"), True),
        (ClientError(500, "InternalError"), True),
        (ClientError(429, "TooManyRequests"), True),
        (_translated(ClientError(503, "ServiceUnavailable")), True),
        (FileNotFoundError(errno.ENOENT, "no such key"), False),
        (PermissionError(errno.EACCES, "AccessDenied"), False),
        (OSError(errno.EINVAL, "InvalidBucketName"), False),
        (ClientError(404, "NoSuchKey"), False),
        (_translated(ClientError(403, "AccessDenied")), False),
        (ValueError("bad option"), False),
        (StorageError("already retried"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_transient_failure_is_retried_until_it_passes() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return "listed"

    assert retrying("list s3://b/in/", flaky, policy=FAST) == "listed"
    assert len(calls) == 3


def test_retries_are_bounded_then_a_transient_storage_error() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def throttled() -> None:
        calls.append(1)
        raise _translated(ClientError(503, "SlowDown"), errno.EBUSY)

    policy = RetryPolicy(attempts=5, base_s=0.5, cap_s=1.0)
    with pytest.raises(StorageError) as err:
        retrying("upload s3://b/out/part-00001-a1.parquet", throttled, policy=policy, sleep=waits.append)
    assert len(calls) == 5 and len(waits) == 4
    assert all(0 <= w <= 1.0 for w in waits)  # backoff capped
    assert isinstance(err.value, TransientError) and err.value.transient
    assert "upload s3://b/out/part-00001-a1.parquet" in str(err.value) and "5 tries" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    again = pickle.loads(pickle.dumps(err.value))  # it crosses from a worker process to the coordinator
    assert type(again) is StorageError and again.hint == err.value.hint


def test_a_lasting_error_is_raised_at_once() -> None:
    calls: list[int] = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError(errno.ENOENT, "no such key")

    with pytest.raises(FileNotFoundError):
        retrying("look up s3://b/x", missing, policy=FAST)
    assert calls == [1]


class _Dropping(io.BytesIO):
    """A remote file whose connection drops after ``cut`` bytes were read (once per file opened)."""

    def __init__(self, data: bytes, cut: int | None) -> None:
        super().__init__(data)
        self.cut = cut

    def read(self, size: int | None = -1) -> bytes:
        if self.cut is not None:
            want = len(self.getbuffer()) - self.tell() if size is None or size < 0 else size
            if self.tell() + want > self.cut:
                raise ClientPayloadError("Response payload is not completed")
        return super().read(size)


def test_a_read_resumes_where_the_dropped_connection_left_it() -> None:
    data = bytes(range(256)) * 400
    opened: list[int] = []

    def opener() -> _Dropping:
        opened.append(1)
        return _Dropping(data, cut=30_000 if len(opened) == 1 else None)

    with RetryingFile(opener, "s3://b/in/x.bin", policy=FAST) as fh:
        first = fh.read(20_000)
        rest = fh.read(20_000)  # crosses the cut: the file is opened again at byte 20,000
        tail = fh.read()
        assert fh.tell() == len(data)
    assert first + rest + tail == data
    assert len(opened) == 2


def test_parquet_reads_through_a_file_that_drops_its_connection() -> None:
    table = pa.table({"id": list(range(5_000)), "x": [float(i) for i in range(5_000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=1_000)
    data = sink.getvalue()
    opened: list[int] = []

    def opener() -> _Dropping:
        opened.append(1)
        return _Dropping(data, cut=len(data) // 2 if len(opened) <= 2 else None)

    with RetryingFile(opener, "s3://b/in/x.parquet", policy=FAST) as fh:
        assert pq.ParquetFile(fh).read().equals(table)
    assert len(opened) >= 2


def test_a_file_that_keeps_dropping_is_a_storage_error() -> None:
    data = b"x" * 1_000
    fh = RetryingFile(lambda: _Dropping(data, cut=10), "s3://b/in/x.bin", policy=FAST)
    with fh, pytest.raises(StorageError) as err:
        fh.read()
    assert "read s3://b/in/x.bin at byte 0" in str(err.value)
