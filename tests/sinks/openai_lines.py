"""Checking Batch API output lines with the official ``openai`` package's types.

The SDK has no class for a whole output line (the Batch API's ``BatchRequestOutput`` object), so
:class:`BatchOutputLine` mirrors that object of the OpenAPI spec, strictly (no other keys); its error
is the SDK's ``BatchError`` and the response body is parsed with ``ChatCompletion`` or
``CreateEmbeddingResponse``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
from openai.types import BatchError, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion


class BatchOutputResponse(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchOutputLine(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    id: str
    custom_id: str
    response: BatchOutputResponse | None
    error: dict[str, Any] | None


def parse_line(text: str) -> tuple[BatchOutputLine, Any]:
    """A validated output line and its parsed body (ChatCompletion / CreateEmbeddingResponse) or error
    (BatchError)."""
    line = BatchOutputLine.model_validate(json.loads(text))
    assert list(json.loads(text)) == ["id", "custom_id", "response", "error"]
    assert line.id.startswith("batch_req_")
    if line.response is None:
        assert line.error is not None and set(line.error) == {"code", "message"}
        error = BatchError.model_validate(line.error)
        assert isinstance(error.code, str) and isinstance(error.message, str)
        return line, error
    assert line.error is None
    body = line.response.body
    if body.get("object") == "chat.completion":
        return line, ChatCompletion.model_validate(body)
    if body.get("object") == "list":
        return line, CreateEmbeddingResponse.model_validate(body)
    return line, body


def read_lines(folder: Path) -> list[str]:
    """Every line of the ``part-*.jsonl`` files in ``folder``, in file order."""
    return [line for path in sorted(folder.glob("part-*.jsonl")) for line in path.read_text().splitlines()]
