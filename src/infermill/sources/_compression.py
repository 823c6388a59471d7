"""Compressed CSV and JSONL input, read as a stream with a cap on how far one file may expand.

A compressed file cannot be cut into byte ranges (an offset in it says nothing of where lines start), so
it is always one fragment, read from its start. The cap (``[input] max_decompressed_bytes``) turns a
decompression bomb (a small file that expands without end) into an :class:`InputError` once that many
bytes came out; memory stays bounded either way, since nothing reads a file whole.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import Any

from ..errors import InputError
from ._fs import display_path

__all__ = ["DecompressedFile", "open_decompressed"]


def _zstd_reader(raw: Any) -> Any:
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError(
            "reading .zst files needs the zstandard package",
            hint="pip install 'infermill[zstd]' (or pip install zstandard), then rerun",
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


_OPENERS: dict[str, Any] = {
    # Each is closed by DecompressedFile, with the file under it.
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),  # noqa: SIM115
    "zstd": _zstd_reader,
}


class DecompressedFile(io.RawIOBase):
    """The decompressed bytes of ``raw`` (closed with it), failing once more than ``limit`` came out."""

    def __init__(self, raw: Any, stream: Any, path: str, limit: int, reopen: Any = None) -> None:
        super().__init__()
        self._raw = raw
        self._stream = stream
        self._reopen = reopen
        """Makes a new decompressor over ``raw`` from its start (a seek backwards starts again)."""
        self._path = path
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # forward seeks; readers here seek back only to where they stand

    def tell(self) -> int:
        return int(self._stream.tell())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        here = int(self._stream.tell())
        if (whence == io.SEEK_SET and offset == here) or (whence == io.SEEK_CUR and offset == 0):
            return here  # zstd refuses even a seek to where it stands
        if whence == io.SEEK_SET and offset < here and self._reopen is not None:
            # A compressed stream cannot go back (zstd refuses to): decompress again from the start.
            self._raw.seek(0)
            self._stream = self._reopen(self._raw)
        position = int(self._stream.seek(offset, whence))
        self._check(position)
        return position

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))  # checked against the cap as it grows
        try:
            data: bytes = self._stream.read(size)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - gzip, bz2, lzma and zstd each raise their own types
            raise InputError(
                f"cannot decompress {display_path(self._path)}: {type(exc).__name__}: {exc}",
                hint="the file is damaged or not compressed as its name says; replace or rename it, then "
                "rerun with `infermill run JOB --restart`",
            ) from None
        self._check(self._stream.tell())
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _check(self, position: int) -> None:
        if position > self._limit:
            raise InputError(
                f"{display_path(self._path)} expands to more than {self._limit:,} bytes "
                "([input] max_decompressed_bytes): a decompression bomb, or a file larger than allowed",
                hint="remove the file from the input; if it is genuine, raise [input] max_decompressed_bytes "
                "and rerun with `infermill run JOB --restart`",
            )

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            finally:
                self._raw.close()
        super().close()


def open_decompressed(raw: Any, compression: str, path: str, limit: int) -> DecompressedFile:
    """Wrap the open compressed file ``raw``; decompression errors surface as :class:`InputError`."""
    try:
        stream = _OPENERS[compression](raw)
    except BaseException:
        raw.close()
        raise
    return DecompressedFile(raw, stream, path, limit, reopen=_OPENERS[compression])
