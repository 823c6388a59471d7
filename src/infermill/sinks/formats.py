"""The output file formats: Parquet, Arrow IPC, JSON Lines and CSV."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from .base import ShardWriter, Sink
from .files import FileSink
from .openai_batch import OpenAIBatchSink

if TYPE_CHECKING:
    # pyarrow is imported where a part is written or read: `infermill status` opens a sink (to check the
    # committed parts) and must not pay for it.
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

__all__ = ["SINK_FORMATS"]


class ParquetWriter(ShardWriter):
    """Buffers result batches into row groups of ``ROW_GROUP_ROWS`` (a row group per model batch would make
    files slow to read) and dictionary-encodes only text columns (on unique floats and ids it is pure cost:
    about 80% of the writer's CPU time)."""

    ROW_GROUP_ROWS = 131_072

    def __init__(self, path: str, final_name: str, compression: str = "snappy") -> None:
        super().__init__(path, final_name)
        self._writer: pq.ParquetWriter | None = None
        self._compression = compression
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def _write(self, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            text = [
                f.name for f in table.schema
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type)
            ]
            # Page checksums let a reader (ours included) tell a damaged page from data.
            self._writer = pq.ParquetWriter(
                self.path,
                table.schema,
                compression=self._compression,
                use_dictionary=text or False,
                write_page_checksum=True,
            )
        elif table.schema != self._writer.schema:
            table = table.cast(self._writer.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending and self._writer is not None:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self.ROW_GROUP_ROWS)
        self._pending, self._pending_rows = [], 0

    def _close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None


class ArrowWriter(ShardWriter):
    """An Arrow IPC file (Feather v2): the result batches as they come, no re-encoding."""

    def __init__(self, path: str, final_name: str, compression: str | None = None) -> None:
        super().__init__(path, final_name)
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._schema: pa.Schema | None = None
        self._compression = None if compression in (None, "none") else compression

    def _write(self, table: pa.Table) -> None:
        import pyarrow.ipc as ipc

        if self._writer is None or self._schema is None:
            options = ipc.IpcWriteOptions(compression=self._compression)
            self._schema = table.schema
            self._writer = ipc.new_file(self.path, table.schema, options=options)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


class JsonlWriter(ShardWriter):
    def __init__(self, path: str, final_name: str) -> None:
        super().__init__(path, final_name)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close

    def _write(self, table: pa.Table) -> None:
        lines = [
            json.dumps({k: _json_value(v) for k, v in row.items()}, default=str, ensure_ascii=False)
            for row in table.to_pylist()
        ]
        self._fh.write("\n".join(lines) + "\n")

    def _close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class CsvWriter(ShardWriter):
    def __init__(self, path: str, final_name: str) -> None:
        super().__init__(path, final_name)
        self._writer: pacsv.CSVWriter | None = None

    def _write(self, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # CSV has no nested values: lists and structs are written as JSON text.
        columns = []
        for _name, col in zip(table.column_names, table.columns, strict=True):
            if pa.types.is_nested(col.type):
                col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
            columns.append(col)
        table = pa.table(columns, names=table.column_names)
        if self._writer is None:
            self._writer = pacsv.CSVWriter(self.path, table.schema)
        self._writer.write_table(table)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ParquetSink(FileSink):
    extension = ".parquet"
    writer_cls = ParquetWriter

    def _read(self, source: Any) -> pa.Table:
        import pyarrow.parquet as pq

        with _damaged_part(source):
            return pq.read_table(source, page_checksum_verification=True)

    def _make_writer(self, path: str, final_name: str, errors: bool) -> ShardWriter:
        return ParquetWriter(path, final_name, self.spec.output_settings().compression or "snappy")


@contextlib.contextmanager
def _damaged_part(source: Any) -> Iterator[None]:
    """A committed part that cannot be read back (bad checksum, truncated) is an OutputError saying what to
    do; a missing one stays FileNotFoundError (the caller reports it as missing)."""
    import pyarrow as pa

    try:
        yield
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        where = source if isinstance(source, str) else "a committed part"
        raise OutputError(
            f"{where} is damaged and cannot be read back: {exc}",
            hint="restore the output folder from a copy, or rerun the job with `infermill run JOB --restart`",
        ) from None


class ArrowSink(FileSink):
    extension = ".arrow"
    writer_cls = ArrowWriter

    def _read(self, source: Any) -> pa.Table:
        import pyarrow.ipc as ipc

        with _damaged_part(source), ipc.open_file(source) as reader:
            return reader.read_all()

    def _make_writer(self, path: str, final_name: str, errors: bool) -> ShardWriter:
        return ArrowWriter(path, final_name, self.spec.output_settings().compression)


class JsonlSink(FileSink):
    extension = ".jsonl"
    writer_cls = JsonlWriter

    def _read(self, source: Any) -> pa.Table:
        import pyarrow.json as pajson

        return pajson.read_json(source)


class CsvSink(FileSink):
    extension = ".csv"
    writer_cls = CsvWriter

    def _read(self, source: Any) -> pa.Table:
        import pyarrow.csv as pacsv

        return pacsv.read_csv(source)


SINK_FORMATS: dict[str, type[Sink]] = {"parquet": ParquetSink, "arrow": ArrowSink, "jsonl": JsonlSink, "csv": CsvSink}
SINK_FORMATS["openai-batch"] = OpenAIBatchSink
