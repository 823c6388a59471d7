"""``[output] format = "openai-batch"``: result files in the shape of the OpenAI Batch API's output.

Each result row becomes one line, as the Batch API and ``vllm run-batch`` write them::

    {"id": "batch_req_…", "custom_id": "request-1",
     "response": {"status_code": 200, "request_id": "req_…", "body": {…}}, "error": null}

and each dead-lettered row a line of the errors file (``_errors/part-NNNNN.jsonl``)::

    {"id": "batch_req_…", "custom_id": "request-2", "response": null,
     "error": {"code": "context_length_exceeded", "message": "…"}}

``custom_id`` is the row id (the ``custom_id`` of an ``openai-batch`` input). The response body comes
from the model's output columns, first rule that applies:

1. ``response_body``: a JSON object (text), written verbatim; optional ``status_code`` (default 200)
   and ``request_id`` columns fill those fields (what an HTTP adapter calling a server gives).
2. ``embedding``: a ``/v1/embeddings`` response (``object: "list"``, one embedding, ``usage`` from an
   optional ``prompt_tokens`` column, else 0).
3. ``text``: a ``/v1/chat/completions`` response (``object: "chat.completion"``) with one choice,
   ``finish_reason`` from that column (default ``stop``) and ``usage`` when ``prompt_tokens`` and
   ``completion_tokens`` are there.

The body's ``model`` is a ``model`` column when the table has one (an output, or the request's model
kept with ``[output] keep = ["model"]``), else the name of ``[model] path`` (its last part), else the
model kind. Other kept columns are not written: the line's shape is fixed.

Everything is deterministic, so a rerun writes identical files: ``id``, ``request_id`` and the
completion's ``id`` are hashes of the job name and ``custom_id``, and ``created`` is the newest
modification time (whole seconds) of the local input files (0 for a remote input).

These files cannot be read back into a table, so ``infermill retry`` cannot merge retried rows into
them; to redo failed requests, run their lines (their custom_ids are in ``_errors/``) as a new job.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import OutputError
from ..spec import JobSpec, is_url
from .base import ShardWriter
from .files import FileSink

if TYPE_CHECKING:
    import pyarrow as pa  # annotations only: `infermill status` opens sinks and must not import it

__all__ = ["ERROR_CODES", "OpenAIBatchSink", "OpenAIBatchWriter", "error_line", "result_line"]

ERROR_CODES: dict[str, str] = {
    "PromptTooLongError": "context_length_exceeded",
    "TimeoutError": "timeout",
}
"""Error class -> Batch API error code; any other class gives its snake_case name."""

_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


@dataclass(frozen=True)
class LineContext:
    """What every line of one job shares."""

    job: str
    id_column: str
    model: str
    created: int


class OpenAIBatchWriter(ShardWriter):
    """Writes result (or, with ``errors``, dead-letter) rows as Batch API output lines."""

    def __init__(self, path: str, final_name: str, context: LineContext | None = None, errors: bool = False) -> None:
        super().__init__(path, final_name)
        self.context = context
        self.errors = errors
        self._fh: TextIO | None = None

    def _write(self, table: pa.Table) -> None:
        if self.context is None:
            raise OutputError("OpenAIBatchWriter needs a LineContext (open it with OpenAIBatchSink.open_writer)")
        make = error_line if self.errors else result_line
        lines = [json.dumps(make(row, self.context), ensure_ascii=False) for row in table.to_pylist()]
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close
        self._fh.write("\n".join(lines) + "\n")

    def _close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


class OpenAIBatchSink(FileSink):
    """One ``part-NNNNN.jsonl`` of Batch API output lines per shard."""

    extension = ".jsonl"
    writer_cls = OpenAIBatchWriter

    def __init__(self, spec: JobSpec, *, scratch_root: str | None = None) -> None:
        super().__init__(spec, scratch_root=scratch_root)
        self._context: LineContext | None = None

    def context(self) -> LineContext:
        """The job's shared line fields (the input's modification time is looked up once)."""
        if self._context is None:
            spec = self.spec
            path = (spec.model.path or "").rstrip("/\\")
            self._context = LineContext(
                job=spec.name,
                id_column=spec.input.id_column or "_row_id",
                model=os.path.basename(path) if path else spec.model.kind,
                created=_input_mtime(spec),
            )
        return self._context

    def _make_writer(self, path: str, final_name: str, errors: bool) -> ShardWriter:
        return OpenAIBatchWriter(path, final_name, self.context(), errors)

    def _read(self, source: Any) -> pa.Table:
        raise OutputError(
            "infermill retry cannot merge results into openai-batch output files (they hold responses, "
            "not the model's columns)",
            hint="rerun the job with --restart, or put the failed requests (custom_ids in _errors/) in a new "
            "input file and run it as another job",
        )


def _hash(context: LineContext, custom_id: str, what: str) -> str:
    return hashlib.sha256(f"{context.job}\x1f{custom_id}\x1f{what}".encode()).hexdigest()


def _custom_id(row: dict[str, Any], context: LineContext) -> str:
    value = row.get(context.id_column)
    if value is None:
        raise OutputError(
            f"a result row has no id in column {context.id_column!r}: the openai-batch output needs it as custom_id"
        )
    return str(value)


def result_line(row: dict[str, Any], context: LineContext) -> dict[str, Any]:
    """The Batch API output line for one result row (see the module docstring for the body rules)."""
    custom_id = _custom_id(row, context)
    status, request_id = 200, f"req_{_hash(context, custom_id, 'request')[:32]}"
    if row.get("response_body") is not None:
        body = _json_object(row["response_body"], custom_id)
        status = int(row["status_code"]) if row.get("status_code") is not None else 200
        request_id = str(row["request_id"]) if row.get("request_id") is not None else request_id
    elif "embedding" in row:
        body = _embedding_body(row, context)
    elif "text" in row:
        body = _chat_body(row, context, custom_id)
    else:
        raise OutputError(
            f"the openai-batch output needs a 'text', 'embedding' or 'response_body' column; the results have "
            f"{sorted(row)}",
            hint="set [model] outputs to include one of them, or write another [output] format",
        )
    return {
        "id": f"batch_req_{_hash(context, custom_id, 'line')[:32]}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(row: dict[str, Any], context: LineContext) -> dict[str, Any]:
    """The Batch API errors-file line for one dead-lettered row."""
    custom_id = _custom_id(row, context)
    error_class = str(row.get("_error_class") or "Error")
    return {
        "id": f"batch_req_{_hash(context, custom_id, 'line')[:32]}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": ERROR_CODES.get(error_class) or _snake(error_class), "message": row.get("_error_message")},
    }


def _model(row: dict[str, Any], context: LineContext) -> str:
    value = row.get("model")
    return str(value) if value is not None else context.model


def _chat_body(row: dict[str, Any], context: LineContext, custom_id: str) -> dict[str, Any]:
    reason = row.get("finish_reason")
    prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
    usage = None
    if prompt is not None and completion is not None:
        usage = {
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "total_tokens": int(prompt) + int(completion),
        }
    return {
        "id": f"chatcmpl-{_hash(context, custom_id, 'completion')[:32]}",
        "object": "chat.completion",
        "created": context.created,
        "model": _model(row, context),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": row.get("text"), "refusal": None},
                "logprobs": None,
                "finish_reason": reason if reason in _FINISH_REASONS else "stop",
            }
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def _embedding_body(row: dict[str, Any], context: LineContext) -> dict[str, Any]:
    vector = row.get("embedding")
    if not isinstance(vector, list):
        raise OutputError(f"the 'embedding' column must hold a list of numbers, not {type(vector).__name__}")
    tokens = int(row.get("prompt_tokens") or 0)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [float(v) for v in vector]}],
        "model": _model(row, context),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _json_object(value: Any, custom_id: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        data = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise OutputError(f"response_body of request {custom_id!r} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OutputError(f"response_body of request {custom_id!r} is not a JSON object")
    return data


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _input_mtime(spec: JobSpec) -> int:
    """Newest modification time (whole seconds) of the local input files; 0 for a remote input."""
    path = spec.resolve(spec.input.path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif is_url(path):
        return 0
    if glob.has_magic(path):
        files = glob.glob(path, recursive=True)
    elif os.path.isdir(path):
        files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    else:
        files = [path]
    return max((int(os.stat(f).st_mtime) for f in files if os.path.isfile(f)), default=0)
