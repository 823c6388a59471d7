"""CSV and JSONL input: shards are byte ranges aligned on line starts (see ``_lines``).

Column types are inferred once, from the first ``SAMPLE_BYTES`` of the first non-empty file, and every
range is parsed with those types: a column is never int64 in one shard and double in another. A value
later in the input that does not fit the inferred type is an :class:`InputError` naming the file and
range (the same rule as pyarrow's own streaming readers, which infer from their first block).

Synthetic ids are ``"{relpath}@{range start}#{row index within the range}"``; they are stable for the
same input and ``shard_bytes``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from ..errors import InputError
from ..spec import JobSpec
from ._files import FileSource
from ._fs import InputFile, display_path
from ._lines import LineRange, next_line_start, plan_byte_ranges
from .base import Fragment, Shard, rebatch

__all__ = ["SAMPLE_BYTES", "CsvSource", "JsonlSource", "TextSource"]

SAMPLE_BYTES = 1 << 20
"""How much of the first file is read to infer column types."""
_JSON_BLOCK = 8 << 20  # one JSON line must fit in a block


class TextSource(FileSource):
    """Shared planning and reading of line-oriented formats."""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._schema_file: str | None = None

    def plan(self) -> list[Shard]:
        files = self.listing().files
        if not any(f.size for f in files):
            return []
        self.check_columns()
        return plan_byte_ranges(files, self.spec.input.shard_bytes, self.spec.input.split_files)

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
                for batch in self._read_fragment(fragment, names, where):
                    yield self.finish(batch, target, where, prefix, row)
                    row += batch.num_rows

        yield from rebatch(batches(), batch_size)

    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        candidates = [f for f in files if f.size]
        if not candidates:
            raise InputError(
                f"every input file is empty: {display_path(files[0].path)}", hint="check [input] path"
            )
        chosen: tuple[InputFile, pa.Table] | None = None
        for file in candidates:
            # Header-only or blank files say nothing of types: take the first file that has rows.
            with self.open_file(file.path) as handle:
                sample = handle.read(SAMPLE_BYTES)
                if len(sample) == SAMPLE_BYTES:
                    sample += handle.readline()  # finish the last line
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

    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _parse_error(self, exc: Exception, where: str) -> InputError:
        size = f"{SAMPLE_BYTES // 1024} KiB" if SAMPLE_BYTES >= 1024 else f"{SAMPLE_BYTES} bytes"
        return InputError(
            f"cannot read {where}: {exc}",
            hint=f"column types are inferred from the first {size} of {self.schema_origin()}; "
            "fix the value shown, or make it fit that type",
        )


class CsvSource(TextSource):
    """Reads CSV (and TSV) files with a header line. Quoted values with line breaks need
    ``split_files = false``."""

    format = "csv"

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._headers: dict[str, bytes] = {}

    def _delimiter(self, relpath: str) -> str:
        if self.spec.input.csv_delimiter:
            return self.spec.input.csv_delimiter
        return "\t" if relpath.lower().endswith(".tsv") else ","

    def _parse_options(self, relpath: str) -> pa_csv.ParseOptions:
        return pa_csv.ParseOptions(
            delimiter=self._delimiter(relpath), newlines_in_values=not self.spec.input.split_files
        )

    def _header(self, handle: Any, fragment: Fragment) -> bytes:
        """The file's header line (empty when the file has no complete line), read once per file: a
        remote read of the file's head per range would cost a request each."""
        key = f"{fragment.path}|{fragment.file_fingerprint}"
        header = self._headers.get(key)
        if header is None:
            end = next_line_start(handle, 0)
            handle.seek(0)
            header = handle.read(end) if end else b""
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
        return pa_csv.read_csv(
            io.BytesIO(sample),
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=len(sample) + 1),
            parse_options=self._parse_options(file.relpath),
        )

    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.RecordBatch]:
        schema = self.data_schema()
        with self.open_file(fragment.path) as handle:
            header = self._header(handle, fragment)
            start = max(fragment.start, len(header) or fragment.stop)
            if start >= fragment.stop:
                return
            stream = LineRange(handle, start, fragment.stop, prefix=header)
            if stream.empty:
                return
            convert = pa_csv.ConvertOptions(
                column_types={f.name: f.type for f in schema},
                # An empty list would mean every column; the first column then carries the row count.
                include_columns=names or schema.names[:1],
            )
            try:
                reader = pa_csv.open_csv(
                    stream, parse_options=self._parse_options(fragment.relpath), convert_options=convert
                )
                yield from reader
            except pa.ArrowKeyError as exc:
                raise InputError(
                    f"{where}: {exc}", hint="every input file must have the columns of the first file"
                ) from None
            except pa.ArrowInvalid as exc:
                error = self._parse_error(exc, where)
                if self.spec.input.split_files and "Expected" in str(exc):
                    error.hint = "if quoted values contain line breaks, set [input] split_files = false"
                raise error from None


class JsonlSource(TextSource):
    """Reads JSON Lines files: one JSON object per line. Fields not in the first rows are ignored."""

    format = "jsonl"

    def _parse_sample(self, sample: bytes, file: InputFile) -> pa.Table:
        if not sample.strip():
            return pa.table({})
        return pa_json.read_json(
            io.BytesIO(sample),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(sample) + 1, _JSON_BLOCK)),
        )

    def _sample_error(self, exc: Exception, file: InputFile, sample: bytes) -> InputError:
        bad = _bad_json_line(io.BytesIO(sample).readlines(), 0, file.path)
        return bad or super()._sample_error(exc, file, sample)

    def _read_fragment(self, fragment: Fragment, names: list[str], where: str) -> Iterator[pa.RecordBatch]:
        schema = self.target_schema(names)
        with self.open_file(fragment.path) as handle:
            stream = LineRange(handle, fragment.start, fragment.stop)
            if stream.empty:
                return
            options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            try:
                reader = pa_json.open_json(
                    stream, read_options=pa_json.ReadOptions(block_size=_JSON_BLOCK), parse_options=options
                )
            except pa.ArrowInvalid as exc:
                if "Empty JSON stream" in str(exc):
                    return  # only blank lines in this range
                raise self._json_error(exc, fragment, where) from None
            try:
                yield from reader
            except pa.ArrowInvalid as exc:
                raise self._json_error(exc, fragment, where) from None

    def _json_error(self, exc: Exception, fragment: Fragment, where: str) -> InputError:
        """Point at the first line that is not a JSON object, if there is one (an error path, so a rescan
        of the range is affordable); otherwise the value does not fit the inferred type."""
        with self.open_file(fragment.path) as handle:
            stream = LineRange(handle, fragment.start, fragment.stop)
            bad = _bad_json_line(io.BufferedReader(stream), stream.begin, fragment.path)
        return bad or self._parse_error(exc, where)


def _bad_json_line(lines: Iterable[bytes], offset: int, path: str) -> InputError | None:
    """An error for the first line in ``lines`` (starting at byte ``offset``) that is not a JSON object."""
    hint = "each line must hold one JSON object; fix or remove that line"
    for line in lines:
        text = line.strip()
        if text:
            try:
                value: Any = json.loads(text)
            except ValueError as exc:
                return InputError(
                    f"{display_path(path)}: bad JSON on the line at byte {offset}: {exc}", hint=hint
                )
            if not isinstance(value, dict):
                return InputError(
                    f"{display_path(path)}: the line at byte {offset} is not a JSON object", hint=hint
                )
        offset += len(line)
    return None
