"""``[input] format = "openai-batch"``: request files prepared for the OpenAI Batch API.

Each line is one request::

    {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}}

Shards are byte ranges aligned on line starts, as for JSONL (see ``_lines``). Every line becomes a row
with these string columns:

==========  ==============================================================================
custom_id   the request's id; it is also the row id (``_row_id`` holds it when ``id_column``
            is not set), so results and dead letters carry it
method      ``POST``
url         ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/completions``, ...
body        the request body as compact JSON text
model       ``body.model``
messages    ``body.messages`` as JSON text (null when the body has none)
prompt      the text of the last user message; for other endpoints ``body.input`` (embeddings,
            responses) or ``body.prompt`` (completions) when it is one text
==========  ==============================================================================

A ``custom_id`` must be unique in the whole input (the Batch API requires it, and it identifies the
row): planning reads every ``custom_id`` once and reports a repeated one with both line numbers. A
line that is not a request object is an :class:`InputError` naming the file and line.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from ..errors import InputError
from ..spec import JobSpec
from ._files import FileSource
from ._fs import InputFile, InputListing, display_path, list_input
from ._lines import LineRange, plan_byte_ranges
from .base import SYNTHETIC_ID, Fragment, Shard, rebatch
from .settings import TextSettings

__all__ = ["COLUMNS", "OpenAIBatchSource", "parse_request"]

COLUMNS = ("custom_id", "method", "url", "body", "model", "messages", "prompt")
SCHEMA = pa.schema([pa.field(name, pa.string()) for name in COLUMNS])
_BLOCK = 16 << 20  # Arrow's JSON reader needs each line within one block
_HINT = (
    'each line must be a Batch API request: {"custom_id": "...", "method": "POST", "url": "/v1/...", '
    '"body": {...}}'
)


class OpenAIBatchSource(FileSource):
    """Reads Batch API request files (``.jsonl``) into the columns listed in the module docstring."""

    format = "openai-batch"

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self.settings: TextSettings = spec.input_settings(self.format)
        if spec.input.id_column not in (None, "custom_id"):
            raise InputError(
                f"[input] id_column = {spec.input.id_column!r}: an openai-batch input is identified by "
                "custom_id",
                hint='remove id_column (the ids are the custom_ids either way), or set id_column = "custom_id"',
            )

    def listing(self) -> InputListing:
        if self._listing is None:
            # The files are JSON Lines: a folder input takes its .jsonl (.ndjson, .json) files.
            self._listing = list_input(self.spec, "jsonl")
            self._fs = self._listing.fs
        return self._listing

    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        return SCHEMA

    def plan(self) -> list[Shard]:
        files = self.listing().files
        if not any(f.size for f in files):
            return []
        self.check_columns()
        self._check_unique_ids(files)
        return plan_byte_ranges(files, self.settings.shard_bytes, self.settings.split_files)

    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        synthetic = self.spec.input.id_column is None

        def batches() -> Iterator[pa.RecordBatch]:
            rows: list[dict[str, Any]] = []
            for fragment in shard.fragments:
                for offset, line in self._lines(fragment):
                    rows.append(parse_request(line, lambda o=offset, p=fragment.path: _where(self, p, o)))
                    if len(rows) >= batch_size:
                        yield _batch(rows, names, synthetic)
                        rows = []
            if rows:
                yield _batch(rows, names, synthetic)

        yield from rebatch(batches(), batch_size)

    def _lines(self, fragment: Fragment) -> Iterator[tuple[int, bytes]]:
        """The non-blank lines whose first byte lies in the fragment, with their byte offsets."""
        with self.open_file(fragment.path) as handle:
            stream = LineRange(handle, fragment.start, fragment.stop)
            if stream.empty:
                return
            offset = stream.begin
            for line in io.BufferedReader(stream, 1 << 20):
                if line.strip():
                    yield offset, line
                offset += len(line)

    def _check_unique_ids(self, files: Sequence[InputFile]) -> None:
        """Every line a request and every custom_id once in the whole input: checked with Arrow's JSON
        reader, and on any doubt (a repeat, a line Arrow cannot read, a missing key) again line by line
        in Python, which names the line."""
        ids: set[str] = set()
        for file in files:
            found = self._ids_fast(file) if file.size else []
            if found is None or len(set(found)) != len(found) or not ids.isdisjoint(found):
                seen: dict[str, tuple[str, int]] = {}
                for each in files:
                    self._ids_slow(each, seen)
                return
            ids.update(found)

    def _ids_fast(self, file: InputFile) -> list[str] | None:
        # The empty struct checks that body is an object without converting what is inside.
        schema = pa.schema([*(pa.field(k, pa.string()) for k in ("custom_id", "method", "url")),
                            pa.field("body", pa.struct([]))])
        options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        try:
            with self.open_file(file.path) as handle:
                table = pa_json.read_json(
                    handle, read_options=pa_json.ReadOptions(block_size=_BLOCK), parse_options=options
                )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if any(table.column(k).null_count for k in ("method", "url", "body")):
            return None
        ids = table.column("custom_id").to_pylist()
        if any(not isinstance(i, str) or not i for i in ids):
            return None
        return [str(i) for i in ids]

    def _ids_slow(self, file: InputFile, seen: dict[str, tuple[str, int]]) -> None:
        with self.open_file(file.path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                request = parse_request(line, lambda n=number: f"{display_path(file.path)}, line {n}")
                custom_id = str(request["custom_id"])
                if custom_id in seen:
                    path, first = seen[custom_id]
                    first_at = f"line {first}" if path == file.path else f"{display_path(path)}, line {first}"
                    raise InputError(
                        f"custom_id {custom_id!r} is repeated: {display_path(file.path)}, line {number} "
                        f"(first at {first_at})",
                        hint="every request in a batch needs its own custom_id; it identifies the request's "
                        "result",
                    )
                seen[custom_id] = (file.path, number)

    def _line_number(self, path: str, offset: int) -> int:
        """The 1-based line number at byte ``offset`` (an error path: reads the file up to there)."""
        count = 0
        with self.open_file(path) as handle:
            remaining = offset
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                remaining -= len(block)
        return count + 1


def _where(source: OpenAIBatchSource, path: str, offset: int) -> str:
    return f"{display_path(path)}, line {source._line_number(path, offset)}"


def parse_request(line: bytes | str, where: Any) -> dict[str, str | None]:
    """One request line as the row's column values. ``where()`` names the line for an error."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise InputError(f"{where()}: not valid JSON: {exc}", hint=_HINT) from None
    if not isinstance(data, dict):
        raise InputError(f"{where()}: not a JSON object", hint=_HINT)
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InputError(f"{where()}: 'custom_id' must be a non-empty string, not {custom_id!r}", hint=_HINT)
    for key in ("method", "url"):
        if not isinstance(data.get(key), str):
            raise InputError(f"{where()}: request {custom_id!r} has no '{key}' string", hint=_HINT)
    body = data.get("body")
    if not isinstance(body, dict):
        raise InputError(f"{where()}: request {custom_id!r} has no 'body' object", hint=_HINT)
    messages = body.get("messages")
    model = body.get("model")
    return {
        "custom_id": custom_id,
        "method": data["method"],
        "url": data["url"],
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "model": model if isinstance(model, str) else None,
        "messages": None if messages is None else json.dumps(messages, ensure_ascii=False, separators=(",", ":")),
        "prompt": _prompt(body),
    }


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


def _prompt(body: dict[str, Any]) -> str | None:
    if "messages" in body:
        return _last_user_text(body["messages"])
    for key in ("input", "prompt"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return _last_user_text(value)  # the Responses API's list of input messages
    return None


def _batch(rows: list[dict[str, Any]], names: list[str], synthetic: bool) -> pa.RecordBatch:
    arrays = [pa.array([r[n] for r in rows], pa.string()) for n in names]
    fields = [SCHEMA.field(n) for n in names]
    if synthetic:
        arrays.append(pa.array([r["custom_id"] for r in rows], pa.string()))
        fields.append(pa.field(SYNTHETIC_ID, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
