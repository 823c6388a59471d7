"""Byte-range sharding of line-oriented files (CSV, JSONL).

A file is cut at fixed byte offsets (``shard_bytes`` apart) without reading it, and a line belongs to
the range in which its first byte lies. So a reader of ``[start, stop)`` skips to the first line that
starts at or after ``start`` and stops after the line that holds byte ``stop - 1``: adjacent ranges
meet exactly, and every line is read once whatever the cut points are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from ..spec import compression_of
from ._fs import InputFile
from .base import Fragment, Shard

__all__ = ["LineRange", "next_line_start", "plan_byte_ranges"]

_SCAN = 64 * 1024


def plan_byte_ranges(files: Sequence[InputFile], shard_bytes: int, split_files: bool) -> list[Shard]:
    """Cut files into ranges of ``shard_bytes`` (or whole files) and merge small ones into shards.

    The cut points are fixed per file (multiples of ``shard_bytes``), so one file's shards do not move
    when another file changes size. Empty files are left out. A compressed file is never cut: an offset
    in it says nothing of where lines start.
    """
    shards: list[Shard] = []
    pending: list[Fragment] = []
    size = 0
    for file in files:
        step = shard_bytes if split_files and compression_of(file.path) is None else max(file.size, 1)
        for start in range(0, file.size, step):
            stop = min(start + step, file.size)
            if size and size + (stop - start) > shard_bytes:
                shards.append(Shard(ordinal=len(shards), fragments=tuple(pending)))
                pending, size = [], 0
            fragment = Fragment(
                path=file.path,
                relpath=file.relpath,
                start=start,
                stop=stop,
                file_fingerprint=file.fingerprint,
            )
            pending.append(fragment)
            size += stop - start
            if size >= shard_bytes:
                shards.append(Shard(ordinal=len(shards), fragments=tuple(pending)))
                pending, size = [], 0
    if pending:
        shards.append(Shard(ordinal=len(shards), fragments=tuple(pending)))
    return shards


def next_line_start(handle: Any, offset: int, limit: int | None = None) -> int | None:
    """The position just after the first ``\\n`` at or after ``offset``; None at end of file, or when
    no line starts before ``limit``."""
    handle.seek(offset)
    pos = offset
    while limit is None or pos < limit:
        chunk = handle.read(_SCAN)
        if not chunk:
            return None
        index = chunk.find(b"\n")
        if index >= 0:
            return int(pos + index + 1)
        pos += len(chunk)
    return None


class LineRange(io.RawIOBase):
    """A read-only stream of ``prefix`` and then the lines of ``handle`` whose first byte lies in
    ``[start, stop)``; a last line without a newline gets one, so parsers see whole lines.

    It streams ``chunk_size`` bytes at a time, so a range is never held in memory whole.
    """

    def __init__(self, handle: Any, start: int, stop: int, *, prefix: bytes = b"", chunk_size: int = 1 << 20):
        super().__init__()
        self._handle = handle
        self._stop = stop
        self._chunk_size = chunk_size
        begin = 0 if start == 0 else next_line_start(handle, start - 1, limit=stop)
        self.begin = stop if begin is None else begin
        """Offset of the first line in the file (``stop`` or more when the range holds no line)."""
        self.empty = self.begin >= stop
        self._pos = self.begin
        self._done = self.empty
        self._buffer = b"" if self.empty else prefix
        self._offset = 0
        self._last = b"\n"
        if not self.empty:
            handle.seek(self.begin)

    def readable(self) -> bool:
        return True

    def _fill(self) -> bytes:
        if self._done:
            return b""
        data: bytes = self._handle.read(self._chunk_size)
        if not data:
            self._done = True
            return b"" if self._last == b"\n" else b"\n"
        last_index = self._stop - 1 - self._pos  # where byte stop-1 falls in this chunk
        if last_index < len(data):
            newline = data.find(b"\n", max(last_index, 0))
            if newline >= 0:
                data = data[: newline + 1]
                self._done = True
        self._pos += len(data)
        self._last = data[-1:]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._offset >= len(self._buffer):
            self._buffer, self._offset = self._fill(), 0
            if not self._buffer:
                return b""
        out: bytes = self._buffer[self._offset : self._offset + size]
        self._offset += len(out)
        return out

    def readall(self) -> bytes:
        parts = [self._buffer[self._offset :]]
        self._buffer, self._offset = b"", 0
        while chunk := self._fill():
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
