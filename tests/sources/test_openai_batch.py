"""format = "openai-batch": Batch API request files as rows, custom_id as the id, repeats reported."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermill.errors import InputError
from infermill.sources import open_source
from infermill.sources.base import SYNTHETIC_ID
from infermill.sources.openai_batch import COLUMNS, OpenAIBatchSource
from infermill.testing.sources import source_spec


def chat(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": text}], **body},
    }


REQUESTS = [
    chat("request-1", "What is 2+2?", max_tokens=10),
    chat("request-2", "Ünïcode and \"quotes\"\nand a newline"),
    {"custom_id": "emb-1", "method": "POST", "url": "/v1/embeddings",
     "body": {"model": "text-embedding-3-small", "input": "embed me"}},
    {"custom_id": "cmp-1", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": ["once"]}},
    {"custom_id": "parts", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "look at "}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "this"}]}]}},
    {"custom_id": "resp-1", "method": "POST", "url": "/v1/responses",
     "body": {"model": "m", "input": [{"role": "user", "content": "via responses"}]}},
    {"custom_id": "no-model", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}},
]


def write(path: Path, requests: list[dict[str, Any]], blank_lines: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in requests) + "\n", encoding="utf-8")
    return path


def read_all(spec: Any, batch_size: int = 1000, columns: list[str] | None = None) -> list[dict[str, Any]]:
    source = open_source(spec)
    return [row for shard in source.plan() for b in source.read(shard, batch_size, columns) for row in b.to_pylist()]


def test_columns(tmp_path: Path) -> None:
    spec = source_spec(str(write(tmp_path / "batch.jsonl", REQUESTS)), format="openai-batch")
    source = open_source(spec)
    assert isinstance(source, OpenAIBatchSource)
    assert source.schema() == pa.schema([(c, pa.string()) for c in COLUMNS])
    rows = read_all(spec)
    assert [r["custom_id"] for r in rows] == [r[SYNTHETIC_ID] for r in rows] == [q["custom_id"] for q in REQUESTS]
    first = rows[0]
    assert (first["method"], first["url"], first["model"]) == ("POST", "/v1/chat/completions", "gpt-4o-mini")
    assert json.loads(first["body"]) == REQUESTS[0]["body"]
    assert json.loads(first["messages"]) == REQUESTS[0]["body"]["messages"]
    assert [r["prompt"] for r in rows] == [
        "What is 2+2?", "Ünïcode and \"quotes\"\nand a newline", "embed me", "once", "look at this",
        "via responses", None,
    ]
    assert rows[2]["messages"] is None and rows[6]["model"] is None


def test_id_column_custom_id(tmp_path: Path) -> None:
    spec = source_spec(str(write(tmp_path / "b.jsonl", REQUESTS)), format="openai-batch", id_column="custom_id")
    rows = read_all(spec, columns=["prompt"])
    assert rows[0] == {"prompt": "What is 2+2?", "custom_id": "request-1"}
    with pytest.raises(InputError, match="identified by custom_id"):
        open_source(source_spec(str(tmp_path / "b.jsonl"), format="openai-batch", id_column="url"))


def test_byte_range_shards_read_every_request_once(tmp_path: Path) -> None:
    requests = [chat(f"r{i}", "q" * (i % 7) + str(i)) for i in range(60)]
    write(tmp_path / "data" / "a.jsonl", requests[:35], blank_lines=True)
    write(tmp_path / "data" / "b.jsonl", requests[35:])
    spec = source_spec(str(tmp_path / "data"), format="openai-batch", shard_bytes=700)
    source = open_source(spec)
    shards = source.plan()
    assert len(shards) > 5 and shards == open_source(spec).plan()
    for batch_size in (1, 7, 1000):
        assert [r["custom_id"] for r in read_all(spec, batch_size)] == [q["custom_id"] for q in requests]
    clone = pickle.loads(pickle.dumps(source))
    assert [b.to_pylist() for b in clone.read(shards[2], 5)] == [b.to_pylist() for b in source.read(shards[2], 5)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=400), texts=st.lists(st.text(max_size=30), min_size=1, max_size=12))
def test_any_cut_reads_each_line_once(tmp_path: Path, cut: int, texts: list[str]) -> None:
    requests = [chat(f"id-{i}", t) for i, t in enumerate(texts)]
    path = write(tmp_path / f"h{cut}-{len(texts)}.jsonl", requests)
    spec = source_spec(str(path), format="openai-batch", shard_bytes=cut)
    assert [(r["custom_id"], r["prompt"]) for r in read_all(spec, 3)] == [(q["custom_id"], t) for q, t in
                                                                         zip(requests, texts, strict=True)]


def test_repeated_custom_id_is_reported_with_lines(tmp_path: Path) -> None:
    requests = [chat("a", "1"), chat("b", "2"), chat("c", "3"), chat("b", "4")]
    spec = source_spec(str(write(tmp_path / "batch.jsonl", requests)), format="openai-batch")
    with pytest.raises(InputError, match=r"custom_id 'b' is repeated: .*batch.jsonl, line 4 \(first at line 2\)"):
        open_source(spec).plan()


def test_repeat_across_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.jsonl", [chat("a", "1"), chat("x", "2")])
    write(tmp_path / "d" / "2.jsonl", [chat("b", "1"), chat("c", "2"), chat("x", "3")])
    spec = source_spec(str(tmp_path / "d"), format="openai-batch")
    with pytest.raises(InputError, match=r"'x' is repeated: .*2.jsonl, line 3 \(first at .*1.jsonl, line 2\)"):
        open_source(spec).plan()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        (json.dumps({"custom_id": 7, "method": "POST", "url": "/v1/x", "body": {}}), "'custom_id' must be"),
        (json.dumps({"method": "POST", "url": "/v1/x", "body": {}}), "'custom_id' must be"),
        (json.dumps({"custom_id": "z", "method": "POST", "body": {}}), "request 'z' has no 'url'"),
        (json.dumps({"custom_id": "z", "method": "POST", "url": "/v1/x", "body": "hi"}), "no 'body' object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps(chat("a", "1")) + "\n" + line + "\n" + json.dumps(chat("b", "2")) + "\n")
    with pytest.raises(InputError, match=message) as info:
        open_source(source_spec(str(path), format="openai-batch")).plan()
    assert "batch.jsonl" in str(info.value) and "custom_id" in str(info.value.hint)


def test_bad_line_while_reading_names_its_line(tmp_path: Path) -> None:
    good = [chat(f"r{i}", "x") for i in range(6)]
    path = write(tmp_path / "batch.jsonl", good)
    spec = source_spec(str(path), format="openai-batch", shard_bytes=200)
    source = open_source(spec)
    shards = source.plan()
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({"custom_id": "r4", "method": "POST", "url": "/v1/x"})
    path.write_text("\n".join(lines) + "\n")  # changed after planning
    with pytest.raises(InputError, match="line 5: request 'r4' has no 'body'"):
        [b for shard in shards for b in source.read(shard, 10)]


def test_empty_input_plans_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert open_source(source_spec(str(tmp_path / "empty.jsonl"), format="openai-batch")).plan() == []
