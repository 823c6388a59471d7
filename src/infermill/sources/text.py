"""CSV and JSONL input: shards are byte ranges aligned on line starts (see ``_lines``).

Column types are inferred once, from the first ``SAMPLE_BYTES`` of the first non-empty file, and every
range is parsed with those types: a column is never int64 in one shard and double in another.

A range is read in blocks of whole records (``_records``), each parsed by pyarrow in one call. A block
that fails (bad JSON, bytes not valid in ``[input] encoding``, a value that does not fit its inferred
type, a CSV row with too many fields) is parsed again in halves down to the single rows at fault; each
of those becomes an unreadable row in place (see ``base.INPUT_ERROR``), dead-lettered with class
``input`` and a message naming the file and the row's byte offset, and the rest is scored. A row over
``[input] max_row_bytes`` is one too, skipped without being held in memory. Invalid bytes never reach
the output.

Files ending in ``.gz``, ``.bz2``, ``.xz`` or ``.zst`` are decompressed as they are read (one fragment
per file; offsets in messages are offsets in the decompressed file), at most ``[input]
max_decompressed_bytes`` each.

Synthetic ids are ``"{relpath}@{range start}#{row index within the range}"``; they are stable for the
same input and ``shard_bytes``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from ..errors import InputError
from ..spec import JobSpec, compression_of
from ._compression import open_decompressed
from ._files import FileSource
from ._fs import InputFile, display_path
from ._lines import LineRange, plan_byte_ranges
from ._records import Block, LongRecord, read_blocks, split_records
from .base import INPUT_ERROR, INPUT_ERROR_TYPE, Fragment, Shard, rebatch
from .settings import CsvSettings, TextSettings

__all__ = ["BLOCK_BYTES", "SAMPLE_BYTES", "CsvSource", "JsonlSource", "TextSource"]

SAMPLE_BYTES = 1 << 20
"""How much of the first file is read to infer column types."""
BLOCK_BYTES = 1 << 20
"""About how many bytes of whole records are parsed in one pyarrow call."""
_REASON_CHARS = 300
"""A parser's message may quote the whole row; a dead letter keeps this much of it."""
_CSV_NULLS = frozenset(pa_csv.ConvertOptions().null_values)
_CSV_INT = re.compile(r"\s*-?(?:0[xX][0-9a-fA-F]+|[0-9]+)\s*")
"""What pyarrow's CSV reader takes as an integer (a sign but no "+", hexadecimal, spaces around)."""
_PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeError, ValueError)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


class TextSource(FileSource):
    """Shared planning and reading of line-oriented formats."""

    settings: TextSettings
    quoted = False
    """Whether a record may span lines (CSV with quoted line breaks, when files are not split)."""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._schema_file: str | None = None
        self.settings = spec.input_settings(self.format)

    def plan(self) -> list[Shard]:
        files = self.listing().files
        if not any(f.size for f in files):
            return []
        self.check_columns()
        return plan_byte_ranges(files, self.settings.shard_bytes, self.settings.split_files)

    def open_text(self, path: str) -> Any:
        """Open an input file for reading, decompressed when its name says it is compressed."""
        handle = self.open_file(path)
        compression = compression_of(path)
        if compression is None:
            return handle
        return open_decompressed(handle, compression, path, self.settings.max_decompressed_bytes)

    def _records(self, path: str, handle: Any, start: int, stop: int) -> tuple[LineRange, Iterator[Block | LongRecord]]:
        """The blocks of the records whose first byte lies in ``[start, stop)`` (a compressed file is
        read to its end: its fragment's offsets are in compressed bytes)."""
        if compression_of(path) is not None:
            stop = sys.maxsize
        stream = LineRange(handle, start, stop)
        blocks = read_blocks(
            stream,
            stream.begin,
            block_bytes=BLOCK_BYTES,
            max_row_bytes=self.settings.max_row_bytes,
            quoted=self.quoted,
        )
        return stream, blocks

    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        target = self.target_schema(names)

        def batches() -> Iterator[pa.RecordBatch]:
            for fragment in shard.fragments:
                where = f"{display_path(fragment.path)} (bytes {fragment.start}-{fragment.stop})"
                prefix = f"{fragment.relpath}@{fragment.start}#"
                row = 0
                for table in self._read_fragment(fragment, names, where):
                    for batch in table.to_batches():
                        out = self.finish(batch, target, where, prefix, row)
                        index = batch.schema.get_field_index(INPUT_ERROR)
                        if index >= 0:
                            out = out.append_column(batch.schema.field(index), batch.column(index))
                        yield out
                        row += batch.num_rows

        yield from rebatch(batches(), batch_size)

    # -- schema ------------------------------------------------------------------------------------
    def _sample(self, file: InputFile) -> bytes:
        """The first whole records of ``file`` up to ``SAMPLE_BYTES`` (the record holding the last byte
        included), valid in the encoding and transcoded to UTF-8; unreadable and over-long records are
        left out, so a bad row near the top shapes no type."""
        taken: list[bytes] = []
        size = 0
        with self.open_text(file.path) as handle:
            _stream, blocks = self._records(file.path, handle, 0, file.size)
            for piece in blocks:
                if isinstance(piece, LongRecord):
                    if not taken and self.format == "csv":
                        raise InputError(
                            f"the header line of {display_path(file.path)} is longer than "
                            f"{self.settings.max_row_bytes:,} bytes ([input] max_row_bytes)",
                            hint="check [input] format and csv_delimiter; raise [input] max_row_bytes if the "
                            "header is genuine",
                        )
                    continue
                for _offset, record in split_records(piece.data, self.quoted):
                    try:
                        text = self._decode(record)
                    except UnicodeError as exc:
                        if not taken and self.format == "csv":
                            raise self._header_error(file.path, exc) from None
                        continue
                    # As many records as start within the first SAMPLE_BYTES (the last one whole).
                    if size > SAMPLE_BYTES:
                        break
                    taken.append(text)
                    size += len(record)
                if size > SAMPLE_BYTES:
                    break
        return b"".join(taken)

    def _header_error(self, path: str, exc: UnicodeError) -> InputError:
        return InputError(
            f"the header line of {display_path(path)} is not valid {self.settings.encoding}: {exc}",
            hint='set [input] encoding to the files\' encoding (e.g. encoding = "latin-1"), then run '
            "`infermill validate JOB`",
        )

    def _decode(self, data: bytes) -> bytes:
        """``data`` as UTF-8, checked: bytes that are not valid in ``[input] encoding`` raise."""
        encoding = self.settings.encoding
        if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf"):
            data.decode("utf-8")  # checks only: pyarrow's JSON reader would pass invalid bytes on
            return data
        return data.decode(encoding).encode("utf-8")

    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        candidates = [f for f in files if f.size]
        if not candidates:
            raise InputError(
                f"every input file is empty: {display_path(files[0].path)}", hint="check [input] path"
            )
        chosen: tuple[InputFile, pa.Table] | None = None
        for file in candidates:
            # Header-only or blank files say nothing of types: take the first file that has rows.
            sample = self._sample(file)
            try:
                table = self._parse_sample(sample, file)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise self._sample_error(exc, file, sample) from None
            if chosen is None or table.num_rows:
                chosen = (file, table)
            if table.num_rows:
                break
        assert chosen is not None
        if not chosen[1].num_rows:
            # A header (or blank lines) alone: `validate` and `run` both stop here, with the same words.
            more = len(candidates) - 1
            shown = display_path(candidates[0].path) + (f" and {more} more hold" if more else " holds")
            raise InputError(
                f"the input ({self.spec.input.path}) has no rows: {shown} only a header or blank lines",
                hint="point [input] path at files that hold data rows, then check with `infermill validate JOB`",
            )
        self._schema_file = display_path(chosen[0].path)
        # A column that is empty in the sample says nothing of its type; string holds most values.
        fields = [
            pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in chosen[1].schema
        ]
        return pa.schema(fields)

    def schema_origin(self) -> str:
        self.data_schema()
        return self._schema_file or super().schema_origin()

    def _parse_sample(self, sample: bytes, file: InputFile) -> pa.Table:
        raise NotImplementedError

    def _sample_error(self, exc: Exception, file: InputFile, sample: bytes) -> InputError:
        return InputError(
            f"cannot read the first rows of {display_path(file.path)} as {self.format}: {exc}",
            hint="check [input] format (and csv_delimiter)",
        )

    # -- rows --------------------------------------------------------------------------------------
    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.Table]:
        """The fragment's rows, a table per block."""
        raise NotImplementedError

    def _parse(self, data: bytes, names: list[str], fragment: Fragment) -> pa.Table:
        """Parse UTF-8 records into a table of ``names`` (typed as the dataset schema)."""
        raise NotImplementedError

    def _why(self, record: bytes, exc: Exception) -> str:
        """Why a single record cannot be read, for its dead letter."""
        if isinstance(exc, UnicodeError):
            return f"bytes that are not valid {self.settings.encoding} ({exc})"
        return f"{type(exc).__name__}: {exc}"

    def _raw_id(self, record: bytes, fragment: Fragment) -> Any:
        """The id column's value in an unreadable record, when it can still be found (else None)."""
        return None

    def _precheck(self, text: bytes, schema: pa.Schema, fragment: Fragment) -> str | None:
        """Why pyarrow would refuse one decoded record (checked in Python, row by row, so that a block
        with many bad rows costs one more pyarrow call, not one per row), or None when it looks fine."""
        return None

    def _block_rows(self, block: Block, fragment: Fragment, names: list[str], where: str) -> pa.Table:
        """One block's rows: one pyarrow call, or when that fails, the rows at fault found (checked row by
        row, then by halves for what the checks miss) and the others parsed in one more call."""
        try:
            return self._parse(self._decode(block.data), names, fragment)
        except _PARSE_ERRORS:
            pass
        schema = self.target_schema(self._columns_of(names))
        records = [
            (block.offset + offset, record)
            for offset, record in split_records(block.data, self.quoted)
            if record.strip()  # a blank line is no row
        ]
        texts: list[bytes] = []
        reasons: list[str | None] = []
        for _offset, record in records:
            try:
                text = self._decode(record)
            except UnicodeError as exc:
                texts.append(b"")
                reasons.append(self._why(record, exc))
                continue
            texts.append(text)
            reasons.append(self._precheck(text, schema, fragment))
        ok = [i for i, reason in enumerate(reasons) if reason is None]
        good = self._try_parse([texts[i] for i in ok], names, fragment)
        if good is None:
            for i, reason in self._find_bad([(i, texts[i]) for i in ok], names, fragment):
                reasons[i] = reason
            ok = [i for i, reason in enumerate(reasons) if reason is None]
            good = self._try_parse([texts[i] for i in ok], names, fragment)
        bad = [i for i, reason in enumerate(reasons) if reason is not None]
        failed = self._bad_rows(
            [records[i][1] for i in bad], [records[i][0] for i in bad], [str(reasons[i]) for i in bad],
            names, fragment,
        )
        if good is None:
            # A record that is not one row (rare): each one alone, in order.
            tables = [
                self._parse(texts[i], names, fragment) if reasons[i] is None else failed.slice(bad.index(i), 1)
                for i in range(len(records))
            ]
            return pa.concat_tables(tables, promote_options="default").combine_chunks()
        order = np.empty(len(records), dtype=np.int64)
        order[ok] = np.arange(len(ok))
        order[bad] = len(ok) + np.arange(len(bad))
        combined = pa.concat_tables([good, failed], promote_options="default")
        return combined.take(pa.array(order)).combine_chunks()

    def _try_parse(self, texts: list[bytes], names: list[str], fragment: Fragment) -> pa.Table | None:
        """The records as one table of one row each, or None when pyarrow refuses them (or the count
        is off)."""
        try:
            table = self._parse(b"".join(texts), names, fragment)
        except _PARSE_ERRORS:
            return None
        return table if table.num_rows == len(texts) else None

    def _find_bad(
        self, run: list[tuple[int, bytes]], names: list[str], fragment: Fragment
    ) -> Iterator[tuple[int, str]]:
        """The records of ``run`` that pyarrow refuses alone, with why, found by halves."""
        if not run:
            return
        try:
            self._parse(b"".join(r for _, r in run), names, fragment)
            return
        except _PARSE_ERRORS as exc:
            if len(run) == 1:
                yield run[0][0], self._why(run[0][1], exc)
                return
        middle = len(run) // 2
        yield from self._find_bad(run[:middle], names, fragment)
        yield from self._find_bad(run[middle:], names, fragment)

    def _columns_of(self, names: list[str]) -> list[str]:
        return names

    def _bad_rows(
        self, records: list[bytes | None], offsets: list[int], reasons: list[str], names: list[str],
        fragment: Fragment,
    ) -> pa.Table:
        """Rows in place of those that cannot be read: nulls (the id when found) and the reasons."""
        schema = self.target_schema(self._columns_of(names))
        id_column = self.spec.input.id_column
        arrays = []
        for field in schema:
            if field.name == id_column:
                arrays.append(pa.array([self._id_of(r, field.type, fragment) for r in records], field.type))
            else:
                arrays.append(pa.nulls(len(records), field.type))
        where = "decompressed byte" if compression_of(fragment.path) else "byte"
        shown = display_path(fragment.path)
        errors = [
            {"message": f"{shown}: the row at {where} {at}: {_shorten(why)}", "item": f"{fragment.relpath}@{at}"}
            for at, why in zip(offsets, reasons, strict=True)
        ]
        arrays.append(pa.array(errors, INPUT_ERROR_TYPE))
        return pa.Table.from_arrays(arrays, schema=schema.append(pa.field(INPUT_ERROR, INPUT_ERROR_TYPE)))

    def _id_of(self, record: bytes | None, id_type: pa.DataType, fragment: Fragment) -> Any:
        if record is None:
            return None
        try:
            raw = self._raw_id(record, fragment)
            return None if raw is None else pa.array([raw]).cast(id_type)[0].as_py()
        except Exception:  # noqa: BLE001 - no id found: the file and offset stand for it
            return None

    def _blocks_to_tables(
        self, blocks: Iterator[Block | LongRecord], fragment: Fragment, names: list[str], where: str
    ) -> Iterator[pa.Table]:
        limit = self.settings.max_row_bytes
        for piece in blocks:
            if isinstance(piece, LongRecord):
                reason = (
                    f"the row is longer than {limit:,} bytes ([input] max_row_bytes); raise it if such rows "
                    "are genuine"
                )
                yield self._bad_rows([None], [piece.offset], [reason], names, fragment)
            else:
                yield self._block_rows(piece, fragment, names, where)


class CsvSource(TextSource):
    """Reads CSV (and TSV) files with a header line. Quoted values with line breaks need
    ``split_files = false``."""

    format = "csv"
    settings: CsvSettings

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._headers: dict[str, tuple[int, bytes]] = {}
        self._field_index: dict[str, dict[str, int]] = {}
        self.quoted = not self.settings.split_files

    def _delimiter(self, relpath: str) -> str:
        if self.settings.csv_delimiter:
            return self.settings.csv_delimiter
        return "\t" if relpath.lower().endswith((".tsv", ".tsv.gz", ".tsv.bz2", ".tsv.xz", ".tsv.zst")) else ","

    def _parse_options(self, relpath: str) -> pa_csv.ParseOptions:
        return pa_csv.ParseOptions(
            delimiter=self._delimiter(relpath), newlines_in_values=not self.settings.split_files
        )

    def _header(self, fragment: Fragment) -> tuple[int, bytes]:
        """The file's header line: its length in the file and its UTF-8 bytes (empty when the file has
        no complete line), read once per file: a remote read of the file's head per range would cost a
        request each."""
        key = f"{fragment.path}|{fragment.file_fingerprint}"
        header = self._headers.get(key)
        if header is None:
            limit = self.settings.max_row_bytes
            head = bytearray()
            with self.open_text(fragment.path) as handle:
                while b"\n" not in head and len(head) <= limit:
                    chunk = handle.read(64 * 1024)
                    if not chunk:
                        break
                    head += chunk
            end = head.find(b"\n") + 1
            if not end and len(head) > limit or end > limit:
                raise InputError(
                    f"the header line of {display_path(fragment.path)} is longer than {limit:,} bytes "
                    "([input] max_row_bytes)",
                    hint="check [input] format and csv_delimiter; raise [input] max_row_bytes if the header "
                    "is genuine",
                )
            try:
                header = (end, self._decode(bytes(head[:end])))
            except UnicodeError as exc:
                raise self._header_error(fragment.path, exc) from None
            self._headers[key] = header
        return header

    def _sample_error(self, exc: Exception, file: InputFile, sample: bytes) -> InputError:
        error = super()._sample_error(exc, file, sample)
        if "Expected" in str(exc):
            error.hint = (
                "check [input] csv_delimiter; if quoted values contain line breaks, set split_files = false"
            )
        return error

    def _parse_sample(self, sample: bytes, file: InputFile) -> pa.Table:
        options = self._parse_options(file.relpath)
        # A row with too many or too few fields is dead-lettered when read; here it would only stop inference.
        options.invalid_row_handler = lambda row: "skip"
        return pa_csv.read_csv(
            io.BytesIO(sample),
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=len(sample) + 1),
            parse_options=options,
        )

    def _columns_of(self, names: list[str]) -> list[str]:
        # An empty list would mean every column; the first column then carries the row count.
        return names or self.data_schema().names[:1]

    def _parse(self, data: bytes, names: list[str], fragment: Fragment) -> pa.Table:
        schema = self.data_schema()
        header = self._header(fragment)[1]
        relpath = fragment.relpath
        convert = pa_csv.ConvertOptions(
            column_types={f.name: f.type for f in schema}, include_columns=self._columns_of(names)
        )
        try:
            return pa_csv.read_csv(
                io.BytesIO(header + data),
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=len(header) + len(data) + 1),
                parse_options=self._parse_options(relpath),
                convert_options=convert,
            )
        except pa.ArrowKeyError as exc:
            raise InputError(
                f"{relpath}: {exc}", hint="every input file must have the columns of the first file"
            ) from None

    def _fields(self, fragment: Fragment) -> dict[str, int]:
        """The header's column names and their positions."""
        key = f"{fragment.path}|{fragment.file_fingerprint}"
        fields = self._field_index.get(key)
        if fields is None:
            line = self._header(fragment)[1].decode("utf-8")
            names = next(csv.reader(io.StringIO(line, newline=""), delimiter=self._delimiter(fragment.relpath)), [])
            fields = self._field_index[key] = {name: i for i, name in reversed(list(enumerate(names)))}
            fields[""] = len(names)  # the count, under a name no column of a parsed header has
        return fields

    def _precheck(self, text: bytes, schema: pa.Schema, fragment: Fragment) -> str | None:
        fields = self._fields(fragment)
        delimiter = self._delimiter(fragment.relpath)
        rows = list(csv.reader(io.StringIO(text.decode("utf-8"), newline=""), delimiter=delimiter))
        if len(rows) != 1:
            return None  # pyarrow decides
        values = rows[0]
        if len(values) != fields[""]:
            return self._with_hint(f"Expected {fields['']} columns, got {len(values)}")
        for field in schema:
            value = values[fields[field.name]] if field.name in fields else None
            if value is None or value in _CSV_NULLS:
                continue
            if pa.types.is_integer(field.type):
                fits = _CSV_INT.fullmatch(value) is not None
            elif pa.types.is_floating(field.type):
                fits = _is_float(value)
            else:
                continue  # pyarrow decides
            if not fits:
                return (
                    f"column {field.name!r} holds {_shorten(repr(value))[:80]}, which does not fit its type "
                    f"{field.type} (inferred from the first rows of {self.schema_origin()})"
                )
        return None

    def _with_hint(self, reason: str) -> str:
        if self.settings.split_files:
            reason += " (if quoted values contain line breaks, set [input] split_files = false)"
        return reason

    def _why(self, record: bytes, exc: Exception) -> str:
        reason = super()._why(record, exc)
        if self.settings.split_files and "Expected" in str(exc):
            reason += " (if quoted values contain line breaks, set [input] split_files = false)"
        return reason

    def _raw_id(self, record: bytes, fragment: Fragment) -> Any:
        # Python's csv module takes a row with too many or too few fields; pyarrow would refuse it.
        delimiter = self._delimiter(fragment.relpath)
        names = next(csv.reader([self._header(fragment)[1].decode("utf-8")], delimiter=delimiter))
        values = next(csv.reader([record.decode(self.settings.encoding, errors="replace")], delimiter=delimiter))
        index = names.index(str(self.spec.input.id_column))
        return values[index].strip() if index < len(values) else None

    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.Table]:
        length, header = self._header(fragment)
        if not header:
            return
        stop = sys.maxsize if compression_of(fragment.path) else fragment.stop
        start = max(fragment.start, length)
        if start >= stop:
            return
        with self.open_text(fragment.path) as handle:
            stream, blocks = self._records(fragment.path, handle, start, fragment.stop)
            if stream.empty:
                return
            yield from self._blocks_to_tables(blocks, fragment, names, where)


class JsonlSource(TextSource):
    """Reads JSON Lines files: one JSON object per line. Fields not in the first rows are ignored."""

    format = "jsonl"

    def _parse_sample(self, sample: bytes, file: InputFile) -> pa.Table:
        if not sample.strip():
            return pa.table({})
        try:
            return _read_json(sample, None)
        except pa.ArrowInvalid:
            pass
        # Lines that are not JSON objects are dead-lettered when read; here they would only stop inference.
        lines = [line for line in io.BytesIO(sample).readlines() if _is_object(line)]
        if not lines:
            raise InputError(
                f"cannot read the first rows of {display_path(file.path)} as jsonl: no line is a JSON object",
                hint="each line must hold one JSON object; check [input] format",
            )
        try:
            return _read_json(b"".join(lines), None)
        except pa.ArrowInvalid:
            pass
        # A value of another type than the lines before it (a word in a column of numbers): the types are
        # those of the longest run of first lines that agree, and the row at odds is dead-lettered when read.
        good, bad = 0, len(lines)
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                _read_json(b"".join(lines[:middle]), None)
                good = middle
            except pa.ArrowInvalid:
                bad = middle
        return _read_json(b"".join(lines[: max(good, 1)]), None)

    def _parse(self, data: bytes, names: list[str], fragment: Fragment) -> pa.Table:
        schema = self.target_schema(names)
        if not data.strip():
            return schema.empty_table()
        return _read_json(data, schema)

    def _precheck(self, text: bytes, schema: pa.Schema, fragment: Fragment) -> str | None:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"bad JSON: {exc}"
        if not isinstance(value, dict):
            return "the line is not a JSON object"
        for field in schema:
            item = value.get(field.name)
            if item is not None and not _json_fits(item, field.type):
                return (
                    f"field {field.name!r} holds {_shorten(json.dumps(item))[:80]}, which does not fit its type "
                    f"{field.type} (inferred from the first rows of {self.schema_origin()})"
                )
        return None

    def _why(self, record: bytes, exc: Exception) -> str:
        if isinstance(exc, UnicodeError):
            return super()._why(record, exc)
        try:
            value = json.loads(record)
        except ValueError as error:
            return f"bad JSON: {error}"
        if not isinstance(value, dict):
            return "the line is not a JSON object"
        return (
            f"a value does not fit the column types inferred from the first rows of {self.schema_origin()} "
            f"({type(exc).__name__}: {exc})"
        )

    def _raw_id(self, record: bytes, fragment: Fragment) -> Any:
        value = json.loads(record.decode(self.settings.encoding, errors="replace"))
        return value.get(self.spec.input.id_column) if isinstance(value, dict) else None

    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.Table]:
        with self.open_text(fragment.path) as handle:
            stream, blocks = self._records(fragment.path, handle, fragment.start, fragment.stop)
            if stream.empty:
                return
            yield from self._blocks_to_tables(blocks, fragment, names, where)


def _read_json(data: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = (
        pa_json.ParseOptions()
        if schema is None
        else pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    )
    return pa_json.read_json(
        io.BytesIO(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=parse,
    )


def _json_fits(value: Any, type_: pa.DataType) -> bool:
    """Whether pyarrow's JSON reader takes ``value`` as ``type_`` (for the scalar types; others: True,
    and pyarrow decides)."""
    if pa.types.is_integer(type_):
        return type(value) is int and -(2**63) <= value < 2**63
    if pa.types.is_floating(type_):
        return type(value) in (int, float)
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return type(value) is str
    if pa.types.is_boolean(type_):
        return type(value) is bool
    return True


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
