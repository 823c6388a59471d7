"""A fault-injecting HTTP proxy for tests: sits in front of an S3-compatible server (moto's, on loopback)
and breaks chosen requests the ways object stores and networks break them.

::

    with FaultyProxy(moto_url) as proxy:
        proxy.add(Fault("slowdown", method="GET", path=r"/in/part-1", nth=2))     # 503 SlowDown
        proxy.add(Fault("reset_body", method="GET", path=r"\\.parquet"))          # cut in mid-body
        proxy.add(Fault("drop_response", method="PUT", path=r"/out/part-"))      # done, answer lost
        ...  # storage_options endpoint_url = proxy.url
    proxy.fired                                                                 # which faults fired, on what
    proxy.count("GET", r"list-type=2")                                          # list calls seen
    proxy.max_in_flight                                                         # most requests at once

Fault kinds:

``slowdown``
    answer ``503 SlowDown`` (S3's throttling answer) without forwarding the request;
``status``
    answer ``Fault.status`` (500, 502, 503...) with an S3 error body, without forwarding;
``reset``
    reset the connection (TCP RST) without forwarding;
``reset_body``
    forward, then send the answer's head and half its body, then reset the connection;
``drop_response``
    forward (so the request takes effect: a PUT stores its object), then reset the connection without
    answering: the client cannot tell whether it happened;
``delay``
    wait ``Fault.seconds``, then forward and answer normally: the latency of a store across a network
    (``Fault("delay", seconds=0.02, times=None)`` gives every request 20 ms).

A fault applies to the ``nth`` request (1-based) that matches its ``method`` and ``path`` (a regex
searched in the request target, path and query), and to the ``times - 1`` matching requests after it
(``times=None``: every one from the ``nth`` on). The proxy answers only on 127.0.0.1, keeps client
connections alive as S3 clients expect, and opens one upstream connection per request.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultyProxy", "ProxiedRequest"]

FaultKind = Literal["slowdown", "status", "reset", "reset_body", "drop_response", "delay"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
_CODES = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


@dataclass(frozen=True)
class Fault:
    """One rule: what to break, and which matching request."""

    kind: FaultKind
    method: str = "*"
    """``GET``, ``PUT``, ``HEAD``, ``POST``, ``DELETE``, or ``*`` for any."""
    path: str = ""
    """A regex searched in the request target (``/bucket/key?query``); empty matches every request."""
    nth: int = 1
    """The first matching request (1-based) that gets the fault."""
    times: int | None = 1
    """How many matching requests in a row get it, from the ``nth``; None: every one."""
    status: int = 503
    """The status a ``status`` fault answers."""
    seconds: float = 0.0
    """How long a ``delay`` fault holds the request."""

    def applies(self, seen: int) -> bool:
        """Whether the ``seen``-th matching request (1-based) gets this fault."""
        return seen >= self.nth and (self.times is None or seen < self.nth + self.times)


@dataclass(frozen=True)
class ProxiedRequest:
    """A request the proxy saw, and what it did with it."""

    method: str
    target: str
    outcome: str
    """The upstream's status (``"200"``), or the fault's kind."""


class FaultyProxy:
    """The proxy: ``with FaultyProxy(upstream) as proxy`` starts it on a free port of 127.0.0.1."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._faults: list[Fault] = []
        self._seen: list[int] = []
        self._lock = threading.Lock()
        self.log: list[ProxiedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        """The most requests the proxy was serving at once."""
        self.fired: list[tuple[Fault, ProxiedRequest]] = []
        for fault in faults or []:
            self.add(fault)
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- rules -------------------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        """Add a rule (its count starts now)."""
        with self._lock:
            self._faults.append(fault)
            self._seen.append(0)
        return fault

    def clear(self) -> None:
        """Remove every rule (what was logged stays)."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()

    def count(self, method: str = "*", path: str = "") -> int:
        """How many requests matching ``method`` and ``path`` the proxy saw."""
        pattern = re.compile(path)
        with self._lock:
            return sum(1 for r in self.log if method in ("*", r.method) and pattern.search(r.target))

    def _match(self, method: str, target: str) -> Fault | None:
        chosen: Fault | None = None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.method not in ("*", method) or not re.search(fault.path, target):
                    continue
                self._seen[i] += 1
                if chosen is None and fault.applies(self._seen[i]):
                    chosen = fault
        return chosen

    def _record(self, method: str, target: str, outcome: str, fault: Fault | None) -> None:
        entry = ProxiedRequest(method, target, outcome)
        with self._lock:
            self.log.append(entry)
            if fault is not None:
                self.fired.append((fault, entry))

    # -- life --------------------------------------------------------------------------------------
    def __enter__(self) -> FaultyProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- forwarding --------------------------------------------------------------------------------
    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


class _Handler(socketserver.StreamRequestHandler):
    owner: FaultyProxy

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            if not line.strip():
                continue
            method, target, _version = line.decode("latin-1").split(None, 2)
            message = http.client.parse_headers(self.rfile)
            headers = [(k, v) for k, v in message.items() if k.lower() != "expect"]
            if message.get("Expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it to send the body
            body = self._body(message)
            if not self._answer(method, target, headers, body) or (message.get("Connection", "").lower() == "close"):
                return

    def _body(self, message: Any) -> bytes:
        if "chunked" in message.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(message.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        """Serve one request; False when the connection is gone."""
        owner = self.owner
        with owner._lock:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            return self._serve(method, target, headers, body)
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _serve(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        owner = self.owner
        fault = owner._match(method, target)
        if fault is not None and fault.kind in ("slowdown", "status"):
            status = 503 if fault.kind == "slowdown" else fault.status
            code = "SlowDown" if fault.kind == "slowdown" else _CODES.get(status, str(status))
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                f"{code}</Code><Message>injected by the faulty proxy</Message><RequestId>faulty-proxy</RequestId>"
                "</Error>"
            ).encode()
            payload = b"" if method == "HEAD" else xml
            head = [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))]
            self._send(status, "Slow Down" if fault.kind == "slowdown" else "Error", head, payload)
            owner._record(method, target, fault.kind, fault)
            return True
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)  # the latency being simulated: nothing to wait for but time
        if fault is not None and fault.kind == "reset":
            owner._record(method, target, fault.kind, fault)
            self._reset()
            return False
        try:
            status, reason, resp_headers, data = owner._forward(method, target, headers, body)
        except OSError:
            owner._record(method, target, "upstream failed", None)
            self._reset()
            return False
        if fault is not None and fault.kind == "drop_response":
            owner._record(method, target, fault.kind, fault)
            self._reset()
            return False
        head = [(k, v) for k, v in resp_headers if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        length = _head_length(resp_headers) if method == "HEAD" else len(data)
        head.append(("Content-Length", str(length)))
        if fault is not None and fault.kind == "reset_body":
            owner._record(method, target, fault.kind, fault)
            self._send(status, reason, head, data[: len(data) // 2])
            self._reset()
            return False
        owner._record(method, target, str(status), fault if fault is not None and fault.kind == "delay" else None)
        self._send(status, reason, head, data)
        return True

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout: close() sends RST, as a dropped connection looks to the client.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()


def _head_length(headers: list[tuple[str, str]]) -> int:
    """The Content-Length an upstream answered a HEAD with (the object's size)."""
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)
    return 0
