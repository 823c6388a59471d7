"""A tiny OpenAI-compatible mock server (standard library only), so the example runs offline.

    python serve_mock.py                 # http://127.0.0.1:8765 until Ctrl-C
    python serve_mock.py --port 9000 --seconds 60

It answers POST /v1/chat/completions with a deterministic "sentiment" (a word count, not a model) and
POST /v1/embeddings with 8 numbers hashed from each text, and GET /health. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POSITIVE = {"love", "great", "excellent", "fast", "happy", "good", "recommend"}
NEGATIVE = {"broken", "slow", "bad", "refund", "terrible", "late", "never"}


def sentiment(text: str) -> str:
    words = {w.strip(".,!?").lower() for w in text.split()}
    score = len(words & POSITIVE) - len(words & NEGATIVE)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def embed(text: str) -> list[float]:
    raw = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 128.0 for b in raw[:8]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.reply(200 if self.path == "/health" else 404, {"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if self.path == "/v1/chat/completions":
            prompt = str(body["messages"][-1]["content"])
            answer = sentiment(prompt)
            usage = {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": 1}
            usage["total_tokens"] = usage["prompt_tokens"] + 1
            self.reply(200, {
                "object": "chat.completion",
                "model": body.get("model", "mock"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": usage,
            })
        elif self.path == "/v1/embeddings":
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": embed(str(t))} for i, t in enumerate(texts)]
            self.reply(200, {"object": "list", "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.seconds:
        threading.Timer(args.seconds, server.shutdown).start()
    print(f"mock OpenAI-compatible server on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
