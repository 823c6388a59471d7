"""A fast OpenAI-compatible chat server with a fixed latency, in its own process, for throughput checks.

Unlike :class:`~infermill.testing.http_server.FakeModelServer` (threads, fault schedules, in the test's
own process), this one is an asyncio HTTP/1.1 keep-alive server of a few dozen microseconds of CPU per
request, so a client measured against it is limited by its own CPU and the latency, not by the server::

    with LatencyServer(delay=0.05) as server:      # python -m infermill.testing.latency_server
        ...                                         # [model] url = server.url
        server.stats()                              # {"requests": ..., "max_in_flight": ...}

``POST /v1/chat/completions`` answers ``"echo: <last message>"`` after ``delay`` seconds;
``GET /stats`` gives the requests answered and the most that were in flight at once (the clock of
``max_in_flight`` starts again after each ``GET /stats/reset``); any other GET answers 200 ``{}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from typing import Any

__all__ = ["LatencyServer", "serve"]


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0


def _response(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, delay: float, stats: _Stats) -> None:
        self.delay = delay
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head[0].split(" "), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        stats = self.stats
        if method == "POST" and path.endswith("/chat/completions"):
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                prompt = json.loads(body)["messages"][-1]["content"]
                answer = json.dumps({
                    "choices": [{"message": {"role": "assistant", "content": f"echo: {prompt}"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                reply = _response("200 OK", answer)
            except (ValueError, KeyError, IndexError, TypeError):
                reply = _response("400 Bad Request", b'{"error": "not a chat request"}')
            asyncio.get_running_loop().call_later(self.delay, self._send_later, reply)
            return
        if path == "/stats/reset":
            stats.max_in_flight = stats.in_flight
        if path.startswith("/stats"):
            payload = {"requests": stats.requests, "max_in_flight": stats.max_in_flight}
            self._write(_response("200 OK", json.dumps(payload).encode()))
            return
        self._write(_response("200 OK", b"{}"))

    def _send_later(self, reply: bytes) -> None:
        self.stats.in_flight -= 1
        self.stats.requests += 1
        self._write(reply)

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def serve(port: int, delay: float, ready: Any = None) -> None:
    """Serve on 127.0.0.1:``port`` (0: any free port) until cancelled; ``ready(port)`` once listening."""
    stats = _Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(delay, stats), "127.0.0.1", port, backlog=1024)
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


class LatencyServer:
    """Runs the server in a child process (``python -m infermill.testing.latency_server``)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> LatencyServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infermill.testing.latency_server", "--delay", str(self.delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "PORT <n>" once it listens
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the latency server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def stats(self, reset: bool = False) -> dict[str, int]:
        with urllib.request.urlopen(self.url + ("/stats/reset" if reset else "/stats"), timeout=10) as answer:
            data: dict[str, int] = json.loads(answer.read())
        return data

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def __enter__(self) -> LatencyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each chat answer")
    args = parser.parse_args(argv)

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay, ready))


if __name__ == "__main__":
    main()
