"""A file prepared for the OpenAI Batch API, run locally: openai-batch input -> model -> openai-batch output.

Every output and error line must parse with the openai package's types, custom_ids map one to one,
and a rerun writes identical files.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai.types import BatchError, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

import infermill
from infermill.errors import OutputError
from tests.sinks.openai_lines import parse_line, read_lines

pytest.importorskip("transformers")

from tests.models.llm_helpers import tiny_lm  # noqa: E402 - after the skip: it imports transformers

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def chat_request(custom_id: str, *messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": list(messages), "max_tokens": 16, **params},
    }


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


REQUESTS = [
    chat_request("request-1", SYSTEM, user("What is 2 + 2?")),
    chat_request("request-2", user("Name a primary colour."), temperature=0),
    chat_request("request-3", SYSTEM, user("Hi"), {"role": "assistant", "content": "Hello!"}, user("Bye?")),
    chat_request("request-4", SYSTEM, user("Summarise this essay: " + "blah " * 40)),  # over-long
    chat_request("request-5", user([{"type": "text", "text": "Translate 'chat' to English."}])),
    chat_request("request-6", SYSTEM, user("Is 7 prime?")),
    chat_request("request-7", user("One word: sky colour?")),
]


def write_batch(path: Path, requests: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def llm_job(tmp_path: Path, prompt: str) -> Path:
    tiny_lm(tmp_path, name="tiny-chat")
    write_batch(tmp_path / "batch_input.jsonl", REQUESTS)
    job = tmp_path / "batch.toml"
    job.write_text(textwrap.dedent(f"""
        [input]
        path = "batch_input.jsonl"
        format = "openai-batch"
        shard_bytes = 1500
        [model]
        kind = "llm"
        path = "tiny-chat"
        {prompt}
        max_new_tokens = 6
        outputs = ["text", "prompt_tokens", "completion_tokens", "finish_reason"]
        [batch]
        size = 3
        [output]
        path = "out"
        format = "openai-batch"
        [errors]
        max_failed_rows = 1
    """))
    return job


@pytest.mark.parametrize(
    "prompt",
    [
        'messages_column = "messages"',
        'prompt_template = "Answer in one word.\\nQuestion: {prompt}\\nModel: {model}"\nuse_chat_template = false',
    ],
    ids=["chat-messages", "template"],
)
def test_batch_file_runs_locally_with_the_llm(tmp_path: Path, prompt: str) -> None:
    job = llm_job(tmp_path, prompt)
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded, result.rows_failed) == ("complete", 6, 1)
    assert result.shards_total > 1
    out = tmp_path / "out"
    lines, error_lines = read_lines(out), read_lines(out / "_errors")

    parsed = [parse_line(text) for text in lines]
    assert [line.custom_id for line, _ in parsed] == [r["custom_id"] for r in REQUESTS if r["custom_id"] != "request-4"]
    for line, body in parsed:
        assert isinstance(body, ChatCompletion)
        assert line.response is not None and line.response.status_code == 200
        assert body.model == "tiny-chat" and body.choices[0].message.role == "assistant"
        assert isinstance(body.choices[0].message.content, str)
        assert body.usage is not None and body.usage.completion_tokens == 6
        assert body.usage.total_tokens == body.usage.prompt_tokens + 6
        assert body.choices[0].finish_reason == "length"

    (failed, error), = [parse_line(text) for text in error_lines]
    assert failed.custom_id == "request-4" and failed.response is None
    assert isinstance(error, BatchError) and error.code == "context_length_exceeded"
    assert "more than max_prompt_tokens = 122" in (error.message or "")

    # One line per request across both files; line ids unique.
    ids = [line.custom_id for line, _ in parsed] + [failed.custom_id]
    assert sorted(ids) == sorted(r["custom_id"] for r in REQUESTS)
    assert len({line.id for line, _ in parsed} | {failed.id}) == len(REQUESTS)

    # A rerun from scratch writes byte-identical files (under the new attempt's names: -a1 -> -a2).
    def by_shard() -> dict[str, bytes]:
        return {re.sub(r"-a\d+", "", str(p.relative_to(out))): p.read_bytes() for p in out.rglob("part-*.jsonl")}

    before = by_shard()
    infermill.run(job, restart=True, progress="off")
    assert by_shard() == before


def test_the_model_name_can_come_from_the_requests(tmp_path: Path) -> None:
    job = llm_job(tmp_path, 'messages_column = "messages"')
    job.write_text(job.read_text().replace("[errors]", 'keep = ["model"]\n[errors]'))
    infermill.run(job, progress="off")
    assert {parse_line(text)[1].model for text in read_lines(tmp_path / "out")} == {"gpt-4o-mini"}


def test_retry_into_openai_batch_output_is_refused_clearly(tmp_path: Path) -> None:
    job = llm_job(tmp_path, 'messages_column = "messages"')
    infermill.run(job, progress="off")
    with pytest.raises(OutputError, match="retry cannot merge"):
        infermill.retry(job)


EMBEDDER = '''
import numpy as np

class Embedder:
    """A stand-in embedding model: a 4-dimensional vector from each prompt's characters."""

    def predict(self, batch):
        texts = batch["prompt"]
        vectors = np.array([[len(t), sum(map(ord, t)) % 97, t.count(" "), 1.0] for t in texts], dtype=np.float32)
        return {"embedding": vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                "prompt_tokens": np.array([len(t.split()) for t in texts])}
'''

SERVER = '''
import json

class Replayer:
    """Stands in for an HTTP adapter: answers each request with a server-like JSON body."""

    def predict(self, batch):
        bodies = []
        for custom_id, body in zip(batch["custom_id"], batch["body"]):
            request = json.loads(body)
            bodies.append(json.dumps({
                "id": "chatcmpl-" + custom_id, "object": "chat.completion", "created": 1, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }))
        return {"response_body": bodies, "request_id": ["req-" + c for c in batch["custom_id"]]}
'''


def python_job(
    tmp_path: Path, requests: list[dict[str, Any]], code: str, entry: str, outputs: list[str], id_column: str = ""
) -> Path:
    write_batch(tmp_path / "requests.jsonl", requests)
    (tmp_path / "model.py").write_text(code)
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent(f"""
        [input]
        path = "requests.jsonl"
        format = "openai-batch"
        {f'id_column = "{id_column}"' if id_column else ""}
        [model]
        kind = "python"
        entrypoint = "model.py:{entry}"
        batch_format = "pandas"
        outputs = {json.dumps(outputs)}
        [output]
        path = "out"
        format = "openai-batch"
        keep = ["model"]
    """))
    return job


def test_embeddings_requests(tmp_path: Path) -> None:
    requests = [
        {"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": text}}
        for i, text in enumerate(["the cat sat", "on the mat", "a third sentence here"])
    ]
    job = python_job(tmp_path, requests, EMBEDDER, "Embedder", ["embedding", "prompt_tokens"], "custom_id")
    assert infermill.run(job, progress="off").rows_succeeded == 3
    parsed = [parse_line(text) for text in read_lines(tmp_path / "out")]
    assert [line.custom_id for line, _ in parsed] == ["emb-0", "emb-1", "emb-2"]
    for (_, body), text in zip(parsed, ["the cat sat", "on the mat", "a third sentence here"], strict=True):
        assert isinstance(body, CreateEmbeddingResponse)
        assert len(body.data[0].embedding) == 4 and body.model == "text-embedding-3-small"
        assert body.usage.prompt_tokens == len(text.split())


def test_response_bodies_from_a_server_are_written_verbatim(tmp_path: Path) -> None:
    requests = [chat_request(f"r{i}", user(f"q{i}")) for i in range(5)]
    job = python_job(tmp_path, requests, SERVER, "Replayer", ["response_body", "request_id"])
    assert infermill.run(job, progress="off").rows_succeeded == 5  # custom_id is a feature column here
    parsed = [parse_line(text) for text in read_lines(tmp_path / "out")]
    assert [(line.custom_id, line.response.request_id) for line, _ in parsed] == [  # type: ignore[union-attr]
        (f"r{i}", f"req-r{i}") for i in range(5)
    ]
    assert all(isinstance(body, ChatCompletion) and body.id == f"chatcmpl-r{i}" for i, (_, body) in enumerate(parsed))


def test_repeated_custom_id_stops_before_anything_runs(tmp_path: Path) -> None:
    requests = [chat_request("a", user("1")), chat_request("b", user("2")), chat_request("a", user("3"))]
    job = python_job(tmp_path, requests, SERVER, "Replayer", ["response_body"])
    with pytest.raises(infermill.InputError, match="custom_id 'a' is repeated: .*line 3 \\(first at line 1\\)"):
        infermill.run(job, progress="off")
    assert not (tmp_path / "out" / "part-00000.jsonl").exists()
