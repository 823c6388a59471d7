"""Byte ranges aligned on line starts: any cut points read every line exactly once."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from infermill.sources._fs import InputFile
from infermill.sources._lines import LineRange, next_line_start, plan_byte_ranges


def read_range(data: bytes, start: int, stop: int, chunk_size: int = 3, prefix: bytes = b"") -> bytes:
    return LineRange(io.BytesIO(data), start, stop, prefix=prefix, chunk_size=chunk_size).read()


def whole(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=60).map(lambda b: bytes(b"ab\n\r"[x % 4] for x in b)),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    chunk_size=st.integers(min_value=1, max_value=8),
)
def test_any_partition_reads_every_line_once(data: bytes, cuts: list[int], chunk_size: int) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [read_range(data, a, b, chunk_size) for a, b in zip(points, points[1:], strict=False)]
    assert b"".join(pieces) == whole(data)
    for piece in pieces:
        assert piece == b"" or piece.endswith(b"\n")


def test_a_line_belongs_to_the_range_holding_its_first_byte() -> None:
    data = b"aaa\nbbb\nccc"
    assert read_range(data, 0, 1) == b"aaa\n"
    assert read_range(data, 1, 4) == b""  # no line starts in bytes 1..3
    assert read_range(data, 1, 5) == b"bbb\n"  # "bbb" starts at byte 4
    assert read_range(data, 4, 9) == b"bbb\nccc\n"  # the last line gets its newline
    assert read_range(data, 9, 11) == b""


def test_prefix_comes_first_and_only_when_there_are_lines() -> None:
    assert read_range(b"h\nx\ny\n", 2, 4, prefix=b"h\n") == b"h\nx\n"
    assert read_range(b"h\nxxxx\n", 3, 5, prefix=b"h\n") == b""


def test_read_in_small_pieces() -> None:
    stream = LineRange(io.BytesIO(b"one\ntwo\nthree"), 0, 5, chunk_size=2)
    out = b""
    while chunk := stream.read(3):
        out += chunk
    assert out == b"one\ntwo\n"
    buffer = bytearray(10)
    assert LineRange(io.BytesIO(b"ab\n"), 0, 3).readinto(buffer) == 3 and bytes(buffer[:3]) == b"ab\n"


def test_next_line_start() -> None:
    handle = io.BytesIO(b"ab\ncd\n")
    assert next_line_start(handle, 0) == 3
    assert next_line_start(handle, 2) == 3
    assert next_line_start(handle, 3) == 6
    assert next_line_start(io.BytesIO(b"abc"), 0) is None


def files(*sizes: int) -> list[InputFile]:
    return [
        InputFile(path=f"/d/f{i}", relpath=f"f{i}", size=s, fingerprint=str(s)) for i, s in enumerate(sizes)
    ]


def test_plan_cuts_files_on_a_fixed_grid_and_merges_small_ones() -> None:
    shards = plan_byte_ranges(files(25, 3, 4, 0, 9), shard_bytes=10, split_files=True)
    assert [[(f.relpath, f.start, f.stop) for f in s.fragments] for s in shards] == [
        [("f0", 0, 10)],
        [("f0", 10, 20)],
        [("f0", 20, 25), ("f1", 0, 3)],
        [("f2", 0, 4)],
        [("f4", 0, 9)],
    ]


def test_plan_without_splitting_keeps_files_whole() -> None:
    shards = plan_byte_ranges(files(25, 3, 4), shard_bytes=10, split_files=False)
    assert [[(f.relpath, f.start, f.stop) for f in s.fragments] for s in shards] == [
        [("f0", 0, 25)],
        [("f1", 0, 3), ("f2", 0, 4)],
    ]
