"""A model server on loopback for tests: OpenAI chat and embeddings, KServe v2 and a plain JSON endpoint,
with faults injected by a deterministic schedule.

::

    with FakeModelServer(schedule={"row 3": ["429:1", "ok"], "row 5": ["400"]}) as server:
        ...  # [model] url = server.url
    server.max_in_flight, server.log            # what the server saw

Answers are deterministic functions of the request (chat echoes the prompt, embeddings hash the text,
KServe computes a fixed linear model; ``kserve_models`` maps the model names served to their input
names: one input takes a [rows, 3] matrix, several take one [rows] tensor each), so results can be checked exactly.

The schedule maps a *tag* to the actions of that tag's successive requests; the last action repeats.
A request's tags are its content (chat: the last message; embeddings: each input; json: the body's
``"id"``, else its ``"text"``) then its endpoint (``"chat"``, ``"embeddings"``, ``"kserve"``, ``"json"``);
the first tag with a schedule entry picks the action. Actions: ``ok``; an HTTP status (``400``, ``500``,
...); ``429:S`` (429 with ``Retry-After: S`` seconds); ``429:date:S`` (Retry-After as an HTTP-date S
seconds ahead); ``slow:S`` (answer after S seconds); ``echo-auth:400`` (a 400 whose body repeats the
request's headers, as a careless server might); ``echo:STATUS:FORM:BEFORE:AFTER`` (a STATUS answer, not
JSON, whose body carries the request's Authorization header in one of the ``ECHO_FORMS`` between BEFORE
and AFTER characters of filler text; the base64 forms encode the filler too, so the header starts at any
offset of the encoded blob).

The server answers only on 127.0.0.1, refuses more than ``max_requests`` requests (503, no retry hint) and
stops by itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ECHO_FORMS", "FakeModelServer", "RequestRecord", "echo_body", "embed_text", "kserve_score"]

FILLER = "lorem ipsum dolor sit amet "
"""Text around an echoed header: every 8 characters of it hold a space."""
ECHO_FORMS = ("raw", "json", "json-slash", "json-unicode", "url", "url-plus", "base64", "base64-url", "json-body")
"""How ``echo:`` writes the header: as is, JSON (``json.dumps``), JSON with ``/`` as ``\\/`` (PHP), JSON
with every character as ``\\uXXXX``, URL-encoded (``%2F``), form-encoded (``+`` for a space), base64 and
URL-safe base64 (all between filler text), or ``json-body``: a whole JSON body whose fields hold the
filler and the header (valid JSON, so a 200 answer of it is parsed)."""

KSERVE_WEIGHTS = (0.5, 1.0, -0.25)
"""The KServe model: score = x @ KSERVE_WEIGHTS (features beyond three are ignored)."""


def embed_text(text: str, dims: int = 8) -> list[float]:
    """The fake embedding of ``text``: ``dims`` floats in [-1, 1) from its sha256 (float32-exact)."""
    raw = hashlib.sha256(text.encode()).digest()
    return [(raw[i % len(raw)] - 128) / 128.0 for i in range(dims)]


def kserve_score(row: list[float]) -> float:
    """The fake KServe model's score of one feature row."""
    return float(sum(w * float(x) for w, x in zip(KSERVE_WEIGHTS, row, strict=False)))


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered."""

    t: float
    """time.monotonic() when it arrived."""
    endpoint: str
    tag: str | None
    """The schedule tag that decided the action (None: no entry matched)."""
    action: str
    tokens: int
    """Prompt tokens it counted (chat and embeddings: characters / 4)."""
    authorization: str | None


class FakeModelServer:
    """A threaded HTTP server on an ephemeral loopback port (see the module docstring)."""

    def __init__(
        self,
        *,
        schedule: dict[str, list[str]] | None = None,
        delay: float = 0.0,
        dims: int = 8,
        api_key: str | None = None,
        report_usage: bool = True,
        kserve_models: dict[str, list[str]] | None = None,
        kserve_metadata: bool = True,
        max_requests: int = 2_000,
        lifetime: float = 120.0,
    ) -> None:
        self.schedule = dict(schedule or {})
        self.delay = delay
        self.dims = dims
        self.api_key = api_key
        self.report_usage = report_usage
        self.kserve_models = dict(kserve_models or {"lin": ["x"], "lin-columns": ["f0", "f1", "f2"]})
        self.kserve_metadata = kserve_metadata
        self.max_requests = max_requests
        self.lifetime = lifetime
        self.log: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeModelServer:
        server = self

        class Handler(_Handler):
            owner = server

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # idle keep-alive connections must not hold up stop()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the server saw ----------------------------------------------------------------------
    def records(self, endpoint: str | None = None, tag: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [
                r for r in self.log if (endpoint is None or r.endpoint == endpoint) and (tag is None or r.tag == tag)
            ]

    def count(self, tag: str) -> int:
        """Requests whose content carried ``tag`` (scheduled or not)."""
        with self._lock:
            return self._seen[tag]

    # -- per request ------------------------------------------------------------------------------
    def _action(self, tags: list[str]) -> tuple[str | None, str]:
        with self._lock:
            for tag in tags:
                self._seen[tag] += 1
            for tag in tags:
                actions = self.schedule.get(tag)
                if actions:
                    n = self._seen[tag] - 1
                    return tag, actions[min(n, len(actions) - 1)]
        return None, "ok"

    def _enter(self) -> bool:
        with self._lock:
            if len(self.log) + self.in_flight >= self.max_requests:
                return False
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.log.append(record)

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeModelServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server = self.owner
        path = self.path.split("?")[0].rstrip("/")
        if path in ("", "/health", "/v2/health/ready", "/v2/health/live"):
            self._send(200, {"status": "ok"})
        elif path.startswith("/v2/models/") and path[11:] in server.kserve_models and server.kserve_metadata:
            self._send(200, _kserve_metadata(path[11:], server.kserve_models[path[11:]]))
        elif path.startswith("/v2/models/") and path[11:] in server.kserve_models:
            self._send(501, {"error": "this server has no model metadata"})
        else:
            self._send(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802
        server = self.owner
        t = time.monotonic()
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if not server._enter():
            self._send(503, {"error": "the test server's request budget is spent"})
            return
        try:
            self._post(server, t, raw)
        finally:
            server._leave()

    def _post(self, server: FakeModelServer, t: float, raw: bytes) -> None:
        path = self.path.split("?")[0].rstrip("/")
        auth = self.headers.get("authorization")
        try:
            body = json.loads(raw)
        except ValueError:
            server._record(RequestRecord(t, path, None, "400", 0, auth))
            self._send(400, {"error": "body is not JSON"})
            return
        endpoint, tags, tokens = _classify(path, body, server.kserve_models)
        if endpoint is None:
            server._record(RequestRecord(t, path, None, "404", 0, auth))
            self._send(404, {"error": f"no route {path}"})
            return
        if server.api_key is not None and auth != f"Bearer {server.api_key}":
            server._record(RequestRecord(t, path, None, "401", tokens, auth))
            self._send(401, {"error": {"message": "invalid api key"}})
            return
        tag, action = server._action([*tags, endpoint])
        # Recorded before answering, so a client that has its answer sees the record.
        server._record(RequestRecord(t, path, tag, action, tokens, auth))
        if server.delay:
            server._wait(server.delay)
        if self._fault(action, dict(self.headers.items())):
            return
        self._send(200, _answer(endpoint, body, server))

    def _fault(self, action: str, headers: dict[str, str]) -> bool:
        """Carry out a non-ok action; True when the answer has been sent."""
        if action == "ok":
            return False
        if action.startswith("slow:"):
            self.owner._wait(float(action.split(":", 1)[1]))
            return False
        if action.startswith("429:date:"):
            when = time.time() + float(action.rsplit(":", 1)[1])
            self._send(429, {"error": "slow down"}, {"retry-after": email.utils.formatdate(when, usegmt=True)})
            return True
        if action.startswith("429:"):
            self._send(429, {"error": "slow down"}, {"retry-after": action.split(":", 1)[1]})
            return True
        if action.startswith("echo:"):
            _, code, form, before, after = action.split(":")
            header = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            self._send(int(code), echo_body(header, form, int(before), int(after)).encode())
            return True
        if action.startswith("echo-auth:"):
            self._send(int(action.split(":", 1)[1]), {"error": "bad request", "you_sent": headers})
            return True
        status = int(action)
        self._send(status, {"error": {"message": f"scheduled {status}"}})
        return True


def _filler(n: int) -> str:
    return (FILLER * (n // len(FILLER) + 1))[:n]


def echo_body(header: str, form: str, before: int, after: int) -> str:
    """The body of an ``echo:`` answer: ``header`` written as ``form``, between filler text."""
    from urllib.parse import quote, quote_plus

    text = f"authorization: {header}"
    if form == "json-body":
        return json.dumps({"filler": _filler(before), "you_sent": {"authorization": header}, "more": _filler(after)})
    if form.startswith("base64"):
        blob = (_filler(before) + text + _filler(after)).encode()
        encoded = base64.urlsafe_b64encode(blob) if form == "base64-url" else base64.b64encode(blob)
        return encoded.decode()
    written = {
        "raw": lambda: text,
        "json": lambda: json.dumps({"you_sent": {"authorization": header}}),
        "json-slash": lambda: json.dumps({"you_sent": {"authorization": header}}).replace("/", "\\/"),
        "json-unicode": lambda: '{"you_sent": "' + "".join(f"\\u{ord(c):04x}" for c in text) + '"}',
        "url": lambda: "sent=" + quote(text, safe=""),
        "url-plus": lambda: "sent=" + quote_plus(text),
    }[form]()
    return _filler(before) + written + _filler(after)


def _classify(path: str, body: Any, kserve_models: dict[str, list[str]]) -> tuple[str | None, list[str], int]:
    """The endpoint, the content tags and the prompt tokens of a request."""
    if path == "/v1/chat/completions":
        content = str(body["messages"][-1]["content"])
        return "chat", [content], len(json.dumps(body["messages"])) // 4
    if path == "/v1/embeddings":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return "embeddings", [str(i) for i in inputs], sum(len(str(i)) for i in inputs) // 4
    if path.startswith("/v2/models/") and path.endswith("/infer") and path[11:-6] in kserve_models:
        return "kserve", [], 0
    if path == "/predict":
        tags = [str(body[k]) for k in ("id", "text") if isinstance(body, dict) and k in body]
        return "json", tags, 0
    return None, [], 0


def _answer(endpoint: str, body: Any, server: FakeModelServer) -> Any:
    if endpoint == "chat":
        prompt = str(body["messages"][-1]["content"])
        text = f"echo: {prompt}"
        answer: dict[str, Any] = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if server.report_usage:
            p, c = len(prompt) // 4 + 1, len(text) // 4 + 1
            answer["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return answer
    if endpoint == "embeddings":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vector = embed_text(str(text), server.dims)
            if body.get("encoding_format") == "base64":
                import struct

                packed = struct.pack(f"<{len(vector)}f", *vector)
                data.append({"object": "embedding", "index": i, "embedding": base64.b64encode(packed).decode()})
            else:
                data.append({"object": "embedding", "index": i, "embedding": vector})
        data.reverse()  # "index" says where each belongs; clients must not rely on the order
        tokens = sum(len(str(t)) for t in inputs) // 4
        return {"object": "list", "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    if endpoint == "kserve":
        return _kserve_infer(body)
    return _json_answer(body)


def _kserve_metadata(name: str, inputs: list[str]) -> dict[str, Any]:
    if len(inputs) == 1:
        tensors = [{"name": inputs[0], "datatype": "FP64", "shape": [-1, 3]}]
    else:
        tensors = [{"name": n, "datatype": "FP64", "shape": [-1]} for n in inputs]
    return {
        "name": name,
        "versions": ["1"],
        "platform": "infermill-fake",
        "inputs": tensors,
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "probs", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "BYTES", "shape": [-1, 1]},
        ],
    }


def _kserve_infer(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["inputs"]
    if len(inputs) == 1:
        tensor = inputs[0]
        n, k = tensor["shape"]
        flat = tensor["data"]
        rows = [flat[i * k : (i + 1) * k] for i in range(n)]
    else:  # one tensor per column, in feature order
        columns = [t["data"] for t in inputs]
        n = len(columns[0])
        rows = [[c[i] for c in columns] for i in range(n)]
    scores = [kserve_score(r) for r in rows]
    probs = [[1 / (1 + math.exp(-s)), 1 - 1 / (1 + math.exp(-s))] for s in scores]
    return {
        "model_name": "fake",
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [n], "data": scores},
            {"name": "probs", "datatype": "FP32", "shape": [n, 2], "data": [p for pair in probs for p in pair]},
            {"name": "label", "datatype": "BYTES", "shape": [n, 1], "data": [_label(s) for s in scores]},
        ],
    }


def _label(score: float) -> str:
    return "pos" if score > 0 else "neg"


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def _json_answer(body: Any) -> dict[str, Any]:
    """The JSON endpoint's model: the sum of every number in the body, and its sign as a label."""
    total = sum(_numbers(body))
    return {"predictions": [{"score": total, "label": _label(total)}], "echo": body}
