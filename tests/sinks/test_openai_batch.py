"""format = "openai-batch" output: lines in the Batch API's shape, checked with the openai package's types."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from infermill.errors import OutputError
from infermill.sinks import open_sink
from infermill.sinks.openai_batch import LineContext, OpenAIBatchSink, error_line, result_line
from infermill.spec import InputSpec, JobSpec, ModelSpec, OutputSpec
from tests.sinks.openai_lines import parse_line

CONTEXT = LineContext(job="batch", id_column="_row_id", model="tiny-lm", created=1_700_000_000)


def line(row: dict[str, Any], context: LineContext = CONTEXT, errors: bool = False) -> tuple[Any, Any]:
    make = error_line if errors else result_line
    return parse_line(json.dumps(make(row, context)))


def test_chat_completion_body() -> None:
    parsed, body = line({"_row_id": "request-1", "text": "4", "prompt_tokens": 12, "completion_tokens": 2,
                         "finish_reason": "length"})
    assert parsed.custom_id == "request-1" and parsed.response.status_code == 200
    assert parsed.response.request_id.startswith("req_")
    assert isinstance(body, ChatCompletion)
    assert body.object == "chat.completion" and body.id.startswith("chatcmpl-") and body.created == 1_700_000_000
    assert body.model == "tiny-lm"
    (choice,) = body.choices
    assert (choice.index, choice.message.role, choice.message.content, choice.finish_reason) == (
        0, "assistant", "4", "length")
    assert body.usage is not None
    assert (body.usage.prompt_tokens, body.usage.completion_tokens, body.usage.total_tokens) == (12, 2, 14)


def test_chat_defaults_without_counts() -> None:
    _, body = line({"_row_id": "r", "text": "hi", "model": "gpt-4o-mini", "finish_reason": "abort"})
    assert body.usage is None and body.choices[0].finish_reason == "stop" and body.model == "gpt-4o-mini"


def test_embedding_body() -> None:
    _, body = line({"_row_id": "emb-1", "embedding": [0.5, -1.0, 2.25], "prompt_tokens": 3})
    assert isinstance(body, CreateEmbeddingResponse)
    assert body.data[0].embedding == [0.5, -1.0, 2.25] and body.data[0].index == 0
    assert (body.usage.prompt_tokens, body.usage.total_tokens, body.model) == (3, 3, "tiny-lm")
    _, bare = line({"_row_id": "emb-2", "embedding": [1.0]})
    assert bare.usage.prompt_tokens == 0


def test_response_body_is_written_verbatim() -> None:
    server = {"id": "chatcmpl-abc", "object": "chat.completion", "created": 5, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hey"}, "finish_reason": "stop"}], "extra": [1]}
    parsed, body = line({"_row_id": "a", "response_body": json.dumps(server), "text": "ignored",
                         "status_code": 201, "request_id": "req_server"})
    assert parsed.response.body == server and isinstance(body, ChatCompletion)
    assert (parsed.response.status_code, parsed.response.request_id) == (201, "req_server")
    with pytest.raises(OutputError, match="not JSON"):
        result_line({"_row_id": "a", "response_body": "{nope"}, CONTEXT)
    with pytest.raises(OutputError, match="not a JSON object"):
        result_line({"_row_id": "a", "response_body": "[1]"}, CONTEXT)


def test_error_lines() -> None:
    parsed, error = line({"_row_id": "request-4", "_error_class": "PromptTooLongError", "_error_kind": "item",
                          "_error_message": "the prompt has 300 tokens"}, errors=True)
    assert parsed.response is None and parsed.custom_id == "request-4"
    assert (error.code, error.message) == ("context_length_exceeded", "the prompt has 300 tokens")
    _, other = line({"_row_id": "r", "_error_class": "ItemError", "_error_message": "bad"}, errors=True)
    assert other.code == "item_error"


def test_ids_are_deterministic_per_job_and_custom_id() -> None:
    row = {"_row_id": "request-1", "text": "x"}
    assert result_line(row, CONTEXT) == result_line(dict(row), CONTEXT)
    other_job = LineContext("another", "_row_id", "m", 0)
    first, second = result_line(row, CONTEXT), result_line(row, other_job)
    assert first["id"] != second["id"] and first["response"]["request_id"] != second["response"]["request_id"]
    assert first["id"] != result_line({"_row_id": "request-2", "text": "x"}, CONTEXT)["id"]
    failed = error_line({"_row_id": "request-1", "_error_class": "ItemError", "_error_message": "m"}, CONTEXT)
    assert failed["id"] == first["id"]  # one request, one line id, whichever file it lands in


def test_rows_without_a_known_column_are_an_output_error() -> None:
    with pytest.raises(OutputError, match="needs a 'text', 'embedding' or 'response_body' column") as info:
        result_line({"_row_id": "a", "score": 0.5}, CONTEXT)
    assert "score" in str(info.value)
    with pytest.raises(OutputError, match="no id"):
        result_line({"text": "a"}, CONTEXT)


def spec_for(tmp_path: Path, **model: Any) -> JobSpec:
    model = {"kind": "python", "entrypoint": "m.py:M", **model}
    return JobSpec(
        input=InputSpec(path="batch.jsonl", format="openai-batch"),
        model=ModelSpec(**model),
        output=OutputSpec(path="out", format="openai-batch"),
        base_dir=str(tmp_path),
        name="batch",
    )


def test_sink_writes_part_files_and_refuses_read_back(tmp_path: Path) -> None:
    (tmp_path / "batch.jsonl").write_text("{}\n")
    os.utime(tmp_path / "batch.jsonl", (1_650_000_000.7, 1_650_000_000.7))
    sink = open_sink(spec_for(tmp_path, path="models/my-model/"))
    assert isinstance(sink, OpenAIBatchSink)
    sink.prepare()
    writer = sink.open_writer(3)
    writer.write(pa.table({"_row_id": ["a", "b"], "text": ["x", "y"]}))
    committed = sink.commit(writer.close(), attempt=1)
    assert committed is not None
    name = committed.name
    assert name == "part-00003-a1.jsonl" and sink.list_parts() == ["part-00003-a1.jsonl"]
    lines = (tmp_path / "out" / name).read_text().splitlines()
    bodies = [parse_line(text)[1] for text in lines]
    assert [b.model for b in bodies] == ["my-model", "my-model"] and {b.created for b in bodies} == {1_650_000_000}
    errors = sink.open_writer(3, errors=True)
    errors.write(pa.table({"_row_id": ["c"], "_error_class": ["ValueError"], "_error_message": ["boom"]}))
    committed_errors = sink.commit(errors.close(), attempt=1)
    assert committed_errors is not None and committed_errors.name == "_errors/part-00003-a1.jsonl"
    assert parse_line((tmp_path / "out" / "_errors" / "part-00003-a1.jsonl").read_text())[1].code == "value_error"
    empty = sink.open_writer(4)
    assert sink.commit(empty.close(), attempt=1) is None and not os.path.exists(empty.path)
    with pytest.raises(OutputError, match="retry cannot merge") as info:
        sink.read_part(name)
    assert "new input file" in str(info.value)


def test_model_name_falls_back_to_the_kind(tmp_path: Path) -> None:
    sink = OpenAIBatchSink(spec_for(tmp_path))
    assert sink.context().model == "python" and sink.context().created == 0  # no input file
