"""Cutting a stream of CSV or JSONL bytes into blocks of whole records, none longer than a cap.

A record is a line, or for CSV whose quoted values may hold line breaks (``quoted``), a run of lines
that ends where the count of ``"`` since the record began is even (RFC 4180 doubles a quote inside a
quoted value, so the count's parity tells whether a line break is inside quotes).

A record longer than ``max_row_bytes`` is never held: it is reported as a :class:`LongRecord` at its
offset and its bytes are skipped as they stream past, so a 200 MB line (or a gigabyte of zeros without a
line break) costs no more memory than a short one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Block", "LongRecord", "read_blocks", "split_records"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Block:
    """Whole records, ending in a line break."""

    data: bytes
    offset: int
    """Offset of ``data[0]`` in the (decompressed) file."""


@dataclass(frozen=True)
class LongRecord:
    """A record longer than the cap, skipped unread."""

    offset: int


def _scan(buf: bytearray, start: int, quoted: bool, parity: int) -> tuple[int, int, int]:
    """The ends (just past the line break) of the first and last records that end in ``buf[start:]``
    (-1 when none), and the quote parity at the end of ``buf``."""
    if not quoted:
        first = buf.find(b"\n", start)
        if first < 0:
            return -1, -1, 0
        return first + 1, buf.rfind(b"\n", start) + 1, 0
    first = last = -1
    pos = start
    while (newline := buf.find(b"\n", pos)) >= 0:
        parity ^= buf.count(b'"', pos, newline) & 1
        if not parity:
            if first < 0:
                first = newline + 1
            last = newline + 1
        pos = newline + 1
    parity ^= buf.count(b'"', pos) & 1
    return first, last, parity


def read_blocks(
    stream: Any, offset: int, *, block_bytes: int, max_row_bytes: int, quoted: bool
) -> Iterator[Block | LongRecord]:
    """Blocks of about ``block_bytes`` of whole records from ``stream`` (whose first byte is at ``offset``
    in the file), in order, with a :class:`LongRecord` in place of each record over ``max_row_bytes``.
    A last record without a line break gets one."""
    buf = bytearray()
    last = 0  # end of the last whole record in buf
    parity = 0
    skipping = False
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            if buf and not skipping:
                data = bytes(buf) if buf.endswith(b"\n") else bytes(buf) + b"\n"
                yield from _checked(data, offset, max_row_bytes, quoted)
            return
        start = len(buf)
        buf += chunk
        first, end, parity = _scan(buf, start, quoted, parity)
        if skipping:
            if first < 0:
                offset += len(buf)
                buf.clear()
                continue
            del buf[:first]
            offset += first
            last = end - first
            skipping = False
        elif end > 0:
            last = end
        if len(buf) - last > max_row_bytes:
            if last:
                yield from _checked(bytes(buf[:last]), offset, max_row_bytes, quoted)
            yield LongRecord(offset + last)
            offset += len(buf)
            buf.clear()
            last = 0
            skipping = True
            continue
        if last and len(buf) >= block_bytes:
            yield from _checked(bytes(buf[:last]), offset, max_row_bytes, quoted)
            del buf[:last]
            offset += last
            last = 0


def _checked(data: bytes, offset: int, max_row_bytes: int, quoted: bool) -> Iterator[Block | LongRecord]:
    """``data`` as one block, or when it may hold a record over the cap (only a block longer than the
    cap can), as blocks around each such record."""
    if len(data) <= max_row_bytes:
        yield Block(data, offset)
        return
    begin = 0
    for start, record in split_records(data, quoted):
        if len(record) > max_row_bytes:
            if start > begin:
                yield Block(data[begin:start], offset + begin)
            yield LongRecord(offset + start)
            begin = start + len(record)
    if begin < len(data):
        yield Block(data[begin:], offset + begin)


def split_records(data: bytes, quoted: bool) -> list[tuple[int, bytes]]:
    """The records of a block as (offset in the block, bytes); the last may lack a line break."""
    out: list[tuple[int, bytes]] = []
    begin = pos = 0
    parity = 0
    while (newline := data.find(b"\n", pos)) >= 0:
        if quoted:
            parity ^= data.count(b'"', pos, newline) & 1
        pos = newline + 1
        if not parity:
            out.append((begin, data[begin:pos]))
            begin = pos
    if begin < len(data):
        out.append((begin, data[begin:]))
    return out
