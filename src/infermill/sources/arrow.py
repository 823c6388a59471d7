"""Arrow IPC input (``format = "arrow"``): the IPC file format (Feather v2: ``.arrow``, ``.feather``,
``.ipc``) and the IPC stream format, told apart by the file's first bytes.

Record batches are the unit an IPC file can read independently, as row groups are for Parquet, so a
shard is a run of whole record batches of about ``shard_rows`` rows: small files merge into one shard, a
shard may span files, and a batch larger than ``shard_rows`` is a shard of its own. The plan is made once
(and frozen in the ledger): for the file format from the footer alone; a stream has no footer, so planning
reads it through once to count its batches, and reading a shard skips the batches before it (a stream
cannot seek). Synthetic ids are ``"{relpath}#{row index in file}"``, independent of the shard size.

A file that is not Arrow IPC, or a batch that cannot be decoded, fails with an :class:`InputError` naming
the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import InputError
from ._files import FileSource, _is_local, plan_units
from ._fs import InputFile, display_path
from .base import Fragment, Shard, rebatch

__all__ = ["ArrowSource"]

_FILE_MAGIC = b"ARROW1"


class ArrowSource(FileSource):
    """Reads Arrow IPC files and streams (one, a folder, a glob or a URL) by record batches."""

    format = "arrow"

    def plan(self) -> list[Shard]:
        self.check_columns()
        counts = ((file, self._batch_rows(file)) for file in self.listing().files)
        return plan_units(counts, self.spec.input.shard_rows)

    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        target = self.target_schema(names)
        pieces = (
            batch for fragment in shard.fragments for batch in self._read_fragment(fragment, names, target)
        )
        yield from rebatch(pieces, batch_size)

    def _read_fragment(self, fragment: Fragment, names: list[str], target: pa.Schema) -> Iterator[pa.RecordBatch]:
        where = display_path(fragment.path)
        with self.open_arrow_file(fragment.path) as handle:
            stored = _schema(handle, where)
            for name in names:
                if name not in stored.names:
                    raise InputError(
                        f"column {name!r} not found in {where}; available columns: {', '.join(stored.names)}",
                        hint="every input file must have the columns of the first file",
                    )
            row = fragment.row_offset
            for batch in _batches(handle, where, fragment.start, fragment.stop):
                yield self.finish(batch.select(names), target, where, f"{fragment.relpath}#", row)
                row += batch.num_rows

    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        with self.open_arrow_file(files[0].path) as handle:
            return _schema(handle, display_path(files[0].path))

    def _batch_rows(self, file: InputFile) -> list[int]:
        """The row count of each record batch of ``file``, in order."""
        where = display_path(file.path)
        # A local file is memory-mapped: reading a batch of the file format then touches only its header.
        opened = pa.memory_map(file.path) if _is_local(self.fs) else self.open_arrow_file(file.path)
        with opened as handle:
            if _is_file_format(handle):
                reader = _open_file(handle, where)
                return [_guard(lambda i=i: reader.get_batch(i).num_rows, where)
                        for i in range(reader.num_record_batches)]
            return [batch.num_rows for batch in _batches(handle, where, 0, None)]


def _is_file_format(handle: Any) -> bool:
    head = handle.read(len(_FILE_MAGIC))
    handle.seek(0)
    return bool(head == _FILE_MAGIC)


def _schema(handle: Any, where: str) -> pa.Schema:
    if _is_file_format(handle):
        schema = _open_file(handle, where).schema
    else:
        schema = _guard(lambda: ipc.open_stream(handle).schema, where)
    handle.seek(0)
    return schema


def _open_file(handle: Any, where: str) -> ipc.RecordBatchFileReader:
    return _guard(lambda: ipc.open_file(handle), where)


def _batches(handle: Any, where: str, start: int, stop: int | None) -> Iterator[pa.RecordBatch]:
    """Record batches ``start`` to ``stop`` (exclusive; None: to the end) of an IPC file or stream."""
    if _is_file_format(handle):
        reader = _open_file(handle, where)
        end = reader.num_record_batches if stop is None else stop
        for index in range(start, end):
            yield _guard(lambda index=index: reader.get_batch(index), where)
        return
    stream = _guard(lambda: ipc.open_stream(handle), where)
    index = 0
    while stop is None or index < stop:
        try:
            batch = _guard(stream.read_next_batch, where)
        except StopIteration:
            return
        if index >= start:
            yield batch
        index += 1


def _guard(call: Any, where: str) -> Any:
    """``call()``, with a file that is not (or no longer) readable Arrow IPC reported as an input error."""
    try:
        return call()
    except StopIteration:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and type(exc) is not OSError and not isinstance(exc, pa.ArrowInvalid):
            raise  # a subclass (lost connection, file removed) is the storage failing, not the bytes
        raise InputError(
            f"{where} is not a readable Arrow IPC file or stream: {exc}",
            hint="check [input] path and format; restore damaged files, or remove files that are not Arrow IPC",
        ) from None
