"""kind = "http": a real HTTP server on loopback (infermill.testing.http_server) for every protocol, faults
by schedule (429 + Retry-After, 5xx, slow answers, permanent 4xx), concurrency and rate limits measured at
the server, secrets kept out of every message, end to end through infermill.run, and the conformance
suite."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import (
    InfermillError,
    ItemError,
    ModelLoadError,
    PartialBatchError,
    SpecError,
    TransientError,
)
from infermill.models import load_adapter
from infermill.models.http import HttpModel
from infermill.models.http.client import parse_retry_after
from infermill.models.http.jsonbody import pick, render
from infermill.models.http.openai import openai_url
from infermill.models.http.ratelimit import RateLimiter, TokenBucket
from infermill.spec import JobSpec, ModelSpec, load_spec
from infermill.testing.http_server import FakeModelServer, embed_text, kserve_score
from infermill.testing.models import ModelAdapterConformance, conformance_batch, model_spec_for
from tests.conftest import read_output
from tests.models.http_helpers import http_job

KEY = "sk-infermill-TEST-5ecret-0123456789"
"""The API key the secrecy tests hunt for."""


def prompts(n: int, start: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([f"row {i}" for i in range(start, start + n)])], names=["prompt"])


def http_spec(
    base: Path, url: str, protocol: str = "openai-chat", outputs: list[str] | None = None, **settings: Any
) -> JobSpec:
    fast = {"backoff_seconds": 0.01, "max_backoff_seconds": 2.0}
    fast.update(settings)
    return model_spec_for(
        base, ModelSpec(kind="http", outputs=outputs, settings={"protocol": protocol, "url": url, **fast})
    )


def ready(spec: JobSpec) -> HttpModel:
    adapter = load_adapter(spec)
    assert isinstance(adapter, HttpModel)
    adapter.setup()
    return adapter


def score(adapter: HttpModel, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start FakeModelServers (keyword arguments as its own); all are stopped after the test."""
    started: list[FakeModelServer] = []

    def start(**kwargs: Any) -> FakeModelServer:
        kwargs.setdefault("lifetime", 60.0)
        server = FakeModelServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeModelServer]:
    with FakeModelServer(lifetime=300.0) as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- conformance ----------------------------------------------------------------------------------
class _HttpConformance(ModelAdapterConformance):
    protocol = "openai-chat"
    settings: dict[str, Any] = {}
    outputs: list[str] | None = None

    @pytest.fixture(autouse=True)
    def _server(self, request: pytest.FixtureRequest, shared_server: FakeModelServer) -> None:
        request.instance.server = shared_server

    def make_spec(self, tmp_path: Path) -> JobSpec:
        server: FakeModelServer = self.server  # type: ignore[attr-defined]
        return http_spec(tmp_path, server.url, self.protocol, self.outputs, **self.settings)


class TestChatConformance(_HttpConformance):
    settings = {"model": "fake", "keep_response": True}

    def make_batch(self) -> pa.RecordBatch:
        return prompts(12)

    def change_model(self, spec: JobSpec) -> None:
        raise NotImplementedError  # the server's weights are invisible; see test_fingerprint_follows_revision


class TestChatTemplateConformance(_HttpConformance):
    settings = {"prompt_template": "{f0:.3f} and {f1:.3f}", "system_prompt": "be brief", "max_tokens": 16}
    outputs = ["text", "finish_reason"]


class TestEmbeddingsConformance(_HttpConformance):
    protocol = "openai-embeddings"
    settings = {"model": "emb", "batch_size": 5, "embedding_size": 8}

    def make_batch(self) -> pa.RecordBatch:
        return prompts(13)


class TestKServeConformance(_HttpConformance):
    protocol = "kserve-v2"
    settings = {"model": "lin", "batch_size": 16}


class TestKServeColumnsConformance(_HttpConformance):
    protocol = "kserve-v2"
    settings = {"model": "lin-columns", "input_layout": "columns", "batch_size": 7}
    outputs = ["score", "label"]


class TestJsonConformance(_HttpConformance):
    protocol = "json"
    settings = {
        "request_template": {"instances": ["$row"], "note": "first {f0}"},
        "response_path": {"score": "predictions.0.score", "label": "predictions.0.label"},
        "output_types": {"score": "float64", "label": "string"},
    }

    def make_spec(self, tmp_path: Path) -> JobSpec:
        server: FakeModelServer = self.server  # type: ignore[attr-defined]
        return http_spec(tmp_path, server.url + "/predict", self.protocol, self.outputs, **self.settings)


# -- protocols: what is sent and what comes back --------------------------------------------------
def test_chat_outputs_and_usage(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, model="m", keep_response=True, max_tokens=5))
    out = score(adapter, prompts(3))
    assert out["text"].to_pylist() == ["echo: row 0", "echo: row 1", "echo: row 2"]
    assert out["finish_reason"].to_pylist() == ["stop"] * 3
    assert out["prompt_tokens"].type == pa.int64() and out["prompt_tokens"].to_pylist() == [2, 2, 2]
    body = json.loads(out["response_body"][0].as_py())
    assert body["choices"][0]["message"]["content"] == "echo: row 0"
    adapter.close()


def test_chat_body_column_is_sent_as_is(tmp_path: Path, serve: Any) -> None:
    server = serve()
    bodies = [json.dumps({"messages": [{"role": "user", "content": f"b{i}"}], "stream": True}) for i in range(3)]
    batch = pa.RecordBatch.from_arrays([pa.array(bodies), pa.array(["x"] * 3)], names=["body", "custom_id"])
    adapter = ready(http_spec(tmp_path, server.url, model="m"))
    assert score(adapter, batch)["text"].to_pylist() == ["echo: b0", "echo: b1", "echo: b2"]
    bad = pa.RecordBatch.from_arrays([pa.array(["{not json"]), pa.array(["x"])], names=["body", "custom_id"])
    with pytest.raises(ItemError, match="not valid JSON"):
        score(adapter, bad)


def test_embeddings_are_float32_in_row_order(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, "openai-embeddings", batch_size=4))
    out = score(adapter, prompts(10))["embedding"]
    assert out.type == pa.list_(pa.float32(), 8)
    expected = np.array([embed_text(f"row {i}") for i in range(10)], dtype=np.float32)
    np.testing.assert_array_equal(np.stack(out.to_numpy(zero_copy_only=False)), expected)
    assert len(server.records("/v1/embeddings")) == 3  # 4 + 4 + 2 texts


def test_embeddings_base64(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, "openai-embeddings", extra_body={"encoding_format": "base64"}))
    out = score(adapter, prompts(3))["embedding"]
    np.testing.assert_array_equal(out[2].values.to_numpy(), np.float32(embed_text("row 2")))


def test_embedding_size_mismatch_is_fatal(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, "openai-embeddings", embedding_size=16))
    with pytest.raises(ModelLoadError, match="8 values, expected 16"):
        score(adapter, prompts(2))


def test_kserve_uses_metadata_and_maps_outputs(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, "kserve-v2", model="lin", batch_size=8))
    assert adapter.outputs == ["score", "probs", "label"]
    batch = conformance_batch(rows=20)
    out = score(adapter, batch)
    x = np.column_stack([c.to_numpy() for c in batch.columns])
    np.testing.assert_allclose(out["score"].to_numpy(), [kserve_score(list(r)) for r in x])
    assert out["probs"].type == pa.list_(pa.float32(), 2)
    assert out["label"].to_pylist() == ["pos" if kserve_score(list(r)) > 0 else "neg" for r in x]
    sent = server.records("/v2/models/lin/infer")
    assert len(sent) == 3


def test_kserve_without_metadata_takes_the_single_output_or_asks(tmp_path: Path, serve: Any) -> None:
    server = serve(kserve_metadata=False)
    adapter = ready(http_spec(tmp_path, server.url, "kserve-v2", model="lin"))
    assert adapter.outputs == ["prediction"]
    with pytest.raises(ModelLoadError, match="which is the prediction"):
        score(adapter, conformance_batch(rows=4))
    named = ready(http_spec(tmp_path, server.url, "kserve-v2", ["score"], model="lin"))
    assert score(named, conformance_batch(rows=4))["score"].type == pa.float64()


def test_kserve_unknown_model_is_fatal_at_setup(tmp_path: Path, serve: Any) -> None:
    server = serve()
    with pytest.raises(ModelLoadError, match="no model at"):
        ready(http_spec(tmp_path, server.url, "kserve-v2", model="nope"))


def test_json_template_and_paths() -> None:
    row = {"a": 1.5, "b": "x", "c": [1, 2]}
    template = {"inputs": ["$row"], "a": "{a}", "text": "b is {b}", "k": 3, "c": "{c}"}
    assert render(template, row) == {"inputs": [row], "a": 1.5, "text": "b is x", "k": 3, "c": [1, 2]}
    assert pick({"p": [{"s": 2}]}, "p.0.s") == 2
    assert pick({"p": 1}, "") == {"p": 1}
    with pytest.raises(KeyError):
        pick({"p": []}, "p.0")


def test_json_default_types(tmp_path: Path, serve: Any) -> None:
    server = serve()
    spec = http_spec(tmp_path, server.url + "/predict", "json", request_template={"id": "{name}", "x": "{x}"},
                     response_path="predictions.0.score")
    adapter = ready(spec)
    batch = pa.RecordBatch.from_arrays([pa.array(["a", "b"]), pa.array([1, 2])], names=["name", "x"])
    out = score(adapter, batch)
    assert out["prediction"].type == pa.float64() and out["prediction"].to_pylist() == [1.0, 2.0]


# -- faults ---------------------------------------------------------------------------------------
def test_429_retry_after_is_honoured(tmp_path: Path, serve: Any) -> None:
    server = serve(schedule={"row 2": ["429:1", "ok"]})
    adapter = ready(http_spec(tmp_path, server.url))
    out = score(adapter, prompts(4))
    assert out["text"].to_pylist()[2] == "echo: row 2"
    first, second = [r.t for r in server.log if r.tag == "row 2"]
    assert second - first >= 0.95


def test_retry_after_as_http_date(tmp_path: Path, serve: Any) -> None:
    server = serve(schedule={"row 0": ["429:date:2", "ok"]})
    adapter = ready(http_spec(tmp_path, server.url))
    assert score(adapter, prompts(1))["text"].to_pylist() == ["echo: row 0"]
    first, second = [r.t for r in server.log if r.tag == "row 0"]
    assert second - first >= 0.9  # an HTTP-date has whole seconds: 2 s ahead is a wait of 1 to 2 s


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_5xx_and_slow_answers_are_retried(tmp_path: Path, serve: Any) -> None:
    server = serve(schedule={"row 1": ["500", "503", "ok"], "row 3": ["slow:2", "ok"]})
    adapter = ready(http_spec(tmp_path, server.url, timeout_seconds=0.3))
    started = time.monotonic()
    out = score(adapter, prompts(5))
    assert out["text"].to_pylist() == [f"echo: row {i}" for i in range(5)]
    assert server.count("row 1") == 3 and server.count("row 3") == 2
    assert time.monotonic() - started < 2.0  # the slow answer was abandoned, not awaited


def test_transient_after_retries_hands_over_the_answers_and_the_row_s_own_error(tmp_path: Path, serve: Any) -> None:
    server = serve(schedule={"row 1": ["500", "500", "ok"]})
    adapter = ready(http_spec(tmp_path, server.url, max_retries=1))
    with pytest.raises(PartialBatchError, match="1 of 4 rows failed; row 1: HTTP 500") as info:
        score(adapter, prompts(4))
    assert [r["text"] for r in info.value.result] == ["echo: row 0", "echo: row 2", "echo: row 3"]
    assert list(info.value.errors) == [1]
    own = info.value.errors[1]
    assert isinstance(own, TransientError) and "(after 2 attempts)" in own.message and "rows" not in own.message
    out = score(adapter, prompts(1, 1))  # the engine's retry: only row 1 is sent again
    assert out["text"].to_pylist() == ["echo: row 1"]
    assert [server.count(f"row {i}") for i in range(4)] == [1, 3, 1, 1]


def test_4xx_is_an_item_error_with_status_and_body_and_bisection_resends_nothing(tmp_path: Path, serve: Any) -> None:
    server = serve(schedule={"row 2": ["422"]})
    adapter = ready(http_spec(tmp_path, server.url))
    batch = prompts(4)
    with pytest.raises(ItemError, match="1 of 4 rows failed; row 2: HTTP 422") as info:
        score(adapter, batch)
    assert isinstance(info.value, PartialBatchError)
    assert [r["text"] for r in info.value.result] == ["echo: row 0", "echo: row 1", "echo: row 3"]
    assert list(info.value.errors) == [2] and isinstance(info.value.errors[2], ItemError)
    with pytest.raises(ItemError, match=r"HTTP 422 from http://127\.0\.0\.1:\d+/v1/chat/completions: .*scheduled 422"):
        score(adapter, batch.slice(2, 1))
    assert [server.count(f"row {i}") for i in range(4)] == [1, 1, 1, 1]


def test_auth_failure_is_fatal(tmp_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(api_key=KEY)
    monkeypatch.setenv("IM_WRONG_KEY", "sk-wrong-key-value")
    adapter = ready(http_spec(tmp_path, server.url, api_key_env="IM_WRONG_KEY"))
    with pytest.raises(ModelLoadError, match="HTTP 401") as info:
        score(adapter, prompts(2))
    assert "sk-wrong-key-value" not in str(info.value)


def test_connection_refused_at_setup_is_fatal(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelLoadError, match="cannot connect to") as info:
        ready(http_spec(tmp_path, url))
    assert "start the model server" in str(info.value)


def test_a_dropped_adapter_shuts_down_without_waiting(tmp_path: Path, serve: Any) -> None:
    # The garbage collector may finalize an adapter inside any thread (even one that threading is starting),
    # where joining the client's loop thread can deadlock: the finalizer stops the loop but does not wait for it.
    adapter = ready(http_spec(tmp_path, serve().url))
    client = adapter._client
    assert client is not None
    release = threading.Event()

    async def hold() -> bool:
        return release.wait(30)  # blocks the loop itself: a finalizer that waited for the loop would hang

    busy = client._loop.submit(hold())
    del adapter
    gc.collect()
    with pytest.raises(RuntimeError, match="shut down"):
        client._loop.submit(asyncio.sleep(0))
    assert not busy.done()
    release.set()
    assert busy.result(timeout=5) is True
    client._loop._thread.join(timeout=5)
    assert not client._loop._thread.is_alive() and client._session.closed


def test_health_path_must_answer_2xx(tmp_path: Path, serve: Any) -> None:
    server = serve()
    ready(http_spec(tmp_path, server.url, health_path="/health")).close()
    with pytest.raises(ModelLoadError, match="health check .* answered HTTP 404"):
        ready(http_spec(tmp_path, server.url, health_path="/nope"))


def test_missing_api_key_variable_is_fatal_at_setup(
    tmp_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    monkeypatch.delenv("IM_NO_SUCH_KEY", raising=False)
    adapter = load_adapter(http_spec(tmp_path, server.url, api_key_env="IM_NO_SUCH_KEY"))
    with pytest.raises(ModelLoadError, match="IM_NO_SUCH_KEY .* is not set"):
        adapter.setup()
    monkeypatch.delenv("IM_NO_HEADER", raising=False)
    adapter = load_adapter(http_spec(tmp_path, server.url, headers={"x-token": "${IM_NO_HEADER}"}))
    with pytest.raises(ModelLoadError, match="IM_NO_HEADER is not set"):
        adapter.setup()


def test_a_header_that_cannot_be_sent_is_fatal_and_stays_secret(
    tmp_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IM_BAD_HEADER", "sk-bad\x01value")
    adapter = load_adapter(http_spec(tmp_path, serve().url, headers={"x-token": "${IM_BAD_HEADER}"}))
    with pytest.raises(ModelLoadError, match="cannot send a request to") as info:
        adapter.setup()
    assert "sk-bad" not in str(info.value) and "check [model] headers" in str(info.value)


# -- concurrency and rate limits, measured at the server -----------------------------------------
def test_concurrency_is_never_exceeded(tmp_path: Path, serve: Any) -> None:
    server = serve(delay=0.05)
    adapter = ready(http_spec(tmp_path, server.url, concurrency=3))
    score(adapter, prompts(24))
    assert server.max_in_flight == 3
    adapter.close()


def test_concurrency_is_split_between_workers(tmp_path: Path) -> None:
    spec = http_spec(tmp_path, "http://127.0.0.1:9", concurrency=8)
    spec = JobSpec(input=spec.input, model=spec.model, output=spec.output, base_dir=spec.base_dir,
                   runtime=type(spec.runtime)(workers=3))
    adapter = load_adapter(spec)
    assert isinstance(adapter, HttpModel) and adapter.concurrency == 2


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_requests_per_minute_is_respected(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, requests_per_minute=240, concurrency=8))
    started = time.monotonic()
    score(adapter, prompts(14))
    elapsed = time.monotonic() - started
    times = [r.t for r in server.records("/v1/chat/completions")]
    # 4 per second, paced from the first request: 14 requests take at least (14 - 1) / 4 = 3.25 s.
    assert elapsed >= 3.2
    assert _max_in_window(times, 1.0) <= 4 + 1


def test_tokens_per_minute_is_respected(tmp_path: Path, serve: Any) -> None:
    server = serve(report_usage=False)
    # 40-character prompts are estimated at 10 tokens; 2400 per minute = 40 per second = 4 requests.
    texts = [f"{i:02d}" + "x" * 38 for i in range(12)]
    batch = pa.RecordBatch.from_arrays([pa.array(texts)], names=["prompt"])
    adapter = ready(http_spec(tmp_path, server.url, tokens_per_minute=2400, temperature=None))
    started = time.monotonic()
    score(adapter, batch)
    elapsed = time.monotonic() - started
    assert 2.8 <= elapsed < 4.0  # 120 tokens less the bucket's 2, at 40 per second
    assert _max_in_window([r.t for r in server.log], 1.0) <= 4 + 1


def test_token_bucket_with_a_fake_clock() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(120, clock=lambda: now[0], sleep=sleep)  # 2 per second, paced from the first
    for _ in range(6):
        bucket.acquire()
    assert now[0] == pytest.approx(2.5)
    big = TokenBucket(60, clock=lambda: now[0], sleep=sleep)  # capacity 1; a request of 5 waits for 4 more
    start = now[0]
    big.acquire(5)
    big.acquire(1)
    assert now[0] - start == pytest.approx(5.0)
    limiter = RateLimiter(None, 600, clock=lambda: now[0], sleep=sleep)
    limiter.pause_until(now[0] + 3)
    start = now[0]
    limiter.acquire(1)
    assert now[0] - start == pytest.approx(3.0)


# -- secrets --------------------------------------------------------------------------------------
def test_the_api_key_never_appears_anywhere(
    tmp_path: Path,
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    server = serve(api_key=KEY, schedule={"row 1": ["echo-auth:400"], "row 3": ["500"], "row 5": ["echo-auth:422"]})
    monkeypatch.setenv("IM_TEST_KEY", KEY)
    monkeypatch.setenv("IM_TEST_HEADER", KEY + "-header")
    job = http_job(
        tmp_path,
        server.url,
        8,
        model={"api_key_env": "IM_TEST_KEY", "headers": {"x-extra": "${IM_TEST_HEADER}"}, "max_retries": 1,
               "backoff_seconds": 0.01},
        batch={"size": 4},
        retry={"max_attempts": 2, "backoff_seconds": 0.01},
    )
    result = infermill.run(job, progress="off")
    # Row 1's echoed 400 and row 5's echoed 422 are item errors, row 3's 500s outlast every retry
    # (transient); the five other rows are answered and kept.
    assert (result.rows_succeeded, result.rows_failed) == (5, 3)
    texts: list[str] = [repr(result), str(result.__dict__), capsys.readouterr().out, caplog.text]
    for path in (tmp_path / "out").rglob("*"):
        if path.suffix == ".parquet":
            texts.append(str(pq.read_table(path).to_pylist()))
        elif path.is_file():
            texts.append(path.read_text(errors="replace"))
    for db in (tmp_path / ".infermill").glob("*.sqlite"):
        con = sqlite3.connect(db)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            texts.append(str(con.execute(f"SELECT * FROM {table}").fetchall()))
        con.close()
    errors = [r for r in pq.read_table(next((tmp_path / "out" / "_errors").rglob("*.parquet"))).to_pylist()]
    assert {e["_error_class"] for e in errors} >= {"ItemError", "TransientError"}
    echoed = [e for e in errors if "you_sent" in e["_error_message"]]
    assert echoed and all("***" in e["_error_message"] for e in echoed)
    adapter = load_adapter(load_spec(job))
    adapter.setup()
    texts += [repr(adapter), repr(adapter.settings), repr(vars(adapter))]
    for exc_batch in (prompts(1, 1), prompts(1, 3)):
        with pytest.raises(InfermillError) as info:
            score(adapter, exc_batch)
        texts += [str(info.value), repr(info.value), info.value.message, info.value.hint or ""]
    adapter.close()
    blob = "\n".join(texts)
    assert "you_sent" in blob and "Bearer ***" in blob
    assert KEY not in blob
    assert "5ecret" not in blob


# -- end to end -----------------------------------------------------------------------------------
def test_run_scores_every_row_and_dead_letters_the_bad_one(tmp_path: Path, serve: Any) -> None:
    server = serve(
        schedule={"row 7": ["400"], "row 3": ["429:1", "ok"], "row 12": ["500", "ok"], "row 15": ["slow:2", "ok"]}
    )
    n = 30
    job = http_job(
        tmp_path,
        server.url,
        n,
        model={"model": "fake", "outputs": ["text", "finish_reason"], "timeout_seconds": 0.5,
               "backoff_seconds": 0.01, "concurrency": 4},
        batch={"size": 8},
    )
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == n - 1
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.column_names == ["id", "text", "finish_reason"]
    expected = [f"echo: row {i}" for i in range(n) if i != 7]
    assert out.column("text").to_pylist() == expected
    errors = pq.read_table(next((tmp_path / "out" / "_errors").rglob("*.parquet"))).to_pylist()
    assert [(e["_error_class"], e["_error_kind"]) for e in errors] == [("ItemError", "item")]
    assert "HTTP 400" in errors[0]["_error_message"]
    assert server.count("row 7") == 1  # cached: bisection did not send it again
    assert max(server.count(f"row {i}") for i in range(n) if i not in (3, 7, 12, 15)) == 1
    # At most 4 requests in flight from the client; the server may also still be sleeping on the one
    # "row 15" request the client gave up on after its 0.5 s timeout (the server holds it for 2 s).
    assert server.max_in_flight <= 4 + 1


def test_run_with_worker_processes_shares_concurrency(tmp_path: Path, serve: Any) -> None:
    server = serve(delay=0.05)
    n = 40
    job = http_job(
        tmp_path,
        server.url,
        n,
        input={"shard_rows": 10},
        model={"outputs": ["text"], "concurrency": 4},
        batch={"size": 10},
        runtime={"workers": 2},
    )
    assert infermill.run(job, progress="off").rows_succeeded == n
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.column("text").to_pylist() == [f"echo: row {i}" for i in range(n)]
    assert server.max_in_flight <= 4  # 2 per worker process


def test_run_with_embeddings(tmp_path: Path, serve: Any) -> None:
    server = serve()
    n = 20
    job = http_job(tmp_path, f"{server.url}/v1", n, protocol="openai-embeddings", model={"batch_size": 6})
    assert infermill.run(job, progress="off").rows_succeeded == n
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert out.column("embedding")[5].values.to_pylist() == pytest.approx(embed_text("row 5"))


# -- settings -------------------------------------------------------------------------------------
def test_openai_url_rules() -> None:
    assert openai_url("http://h:1", "/chat/completions") == "http://h:1/v1/chat/completions"
    assert openai_url("http://h:1/", "/embeddings") == "http://h:1/v1/embeddings"
    assert openai_url("https://h/api/v1", "/embeddings") == "https://h/api/v1/embeddings"
    assert openai_url("http://h:1/custom/chat", "/chat/completions") == "http://h:1/custom/chat"


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"url": "ftp://h"}, "http:// or https://"),
        ({"url": "http://user:pw@h"}, "credentials"),
        ({"concurrency": 0}, "concurrency must be positive"),
        ({"request_template": {"a": 1}}, "request_template does not apply to protocol 'openai-chat'"),
        ({"prompt_column": "a", "prompt_template": "{a}"}, "not both"),
        ({"prompt_template": "{}"}, "column names"),
    ],
)
def test_bad_settings(tmp_path: Path, settings: dict[str, Any], error: str) -> None:
    base = {"protocol": "openai-chat", "url": "http://127.0.0.1:9", **settings}
    with pytest.raises(SpecError, match=error):
        load_adapter(model_spec_for(tmp_path, ModelSpec(kind="http", settings=base)))


def test_unknown_key_has_a_hint(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="did you mean 'concurrency'"):
        settings = {"protocol": "json", "url": "http://h", "concurency": 2}
        model_spec_for(tmp_path, ModelSpec(kind="http", settings=settings))


def test_missing_columns_are_reported(tmp_path: Path, serve: Any) -> None:
    server = serve()
    adapter = ready(http_spec(tmp_path, server.url, prompt_column="question"))
    with pytest.raises(ModelLoadError, match=r"needs the column\(s\) \['question'\]"):
        adapter.preprocess(prompts(2))


def test_fingerprint_follows_revision_not_runtime_keys(tmp_path: Path) -> None:
    def fp(**settings: Any) -> str:
        return load_adapter(http_spec(tmp_path, "http://127.0.0.1:9", model="m", **settings)).fingerprint()

    assert fp() == fp(concurrency=2, requests_per_minute=10)
    assert fp() != fp(revision="2026-01")
    assert fp() != load_adapter(http_spec(tmp_path, "http://127.0.0.1:9", model="other")).fingerprint()
