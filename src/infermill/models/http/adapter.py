"""The ``kind = "http"`` adapter: rows to requests, sent concurrently under the rate limits, answers to
columns. See the package docstring for the protocols and docs/models/http.md for every key."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from ...errors import InfermillError, ItemError, ModelLoadError, PartialBatchError
from ...spec import JobSpec
from ..base import ModelAdapter
from .client import HttpClient, Redactor, expand_env
from .jsonbody import JsonProtocol
from .kserve import KServeProtocol
from .openai import ChatProtocol, EmbeddingsProtocol
from .protocol import EXCERPT_CHARS, Atom, HttpProtocol, digest, dumps
from .ratelimit import RateLimiter
from .settings import HttpSettings, misplaced_keys

__all__ = ["HttpModel"]

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, type[HttpProtocol]] = {
    p.name: p for p in (ChatProtocol, EmbeddingsProtocol, KServeProtocol, JsonProtocol)
}
_MISS = object()
MAX_LANES = 32
"""At most this many batches in flight (a lane is a thread that waits; the requests are on the loop)."""
_Outcome = tuple[list[Any], InfermillError | None]
"""A request's rows' values, or its error."""


class _Answers:
    """Answers (values, or a one-row ItemError) by request key, least recently used dropped first. Values
    are dropped once handed to the engine (in the result, or in a PartialBatchError); the item errors of
    one-row requests stay, so the engine's bisection of failed rows does not send them again. Shared by
    the lanes (threads)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._data.get(key, _MISS)
            if value is not _MISS:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class HttpModel(ModelAdapter):
    """Scores rows through a model server; see :mod:`infermill.models.http`."""

    kind = "http"
    settings_cls = HttpSettings
    result_neutral_settings = frozenset({
        "concurrency", "requests_per_minute", "tokens_per_minute", "timeout_seconds", "max_retries",
        "backoff_seconds", "max_backoff_seconds", "health_path",
    })

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        s: HttpSettings = self.settings
        ms = self.model_spec
        _check(s)
        if ms.path is not None:
            raise ModelLoadError(
                "model kind 'http' does not use 'model.path'", hint="the server is given by 'model.url'"
            )
        workers = max(1, spec.runtime.workers)
        self.concurrency = max(1, s.concurrency // workers)
        """Requests in flight in this worker (the job's concurrency, split between workers)."""
        self._rpm = s.requests_per_minute / workers if s.requests_per_minute else None
        self._tpm = s.tokens_per_minute / workers if s.tokens_per_minute else None
        self.protocol = PROTOCOLS[s.protocol](s, ms.outputs)
        if ms.features is not None:
            self.protocol.check_columns(list(ms.features))
        rows = spec.batch.size if isinstance(spec.batch.size, int) else 8192  # "auto" is resolved per worker
        self._lanes = min(MAX_LANES, 1 + math.ceil(self.concurrency / math.ceil(rows / self.protocol.group_size)))
        self._answers = _Answers(max(1024, 2 * rows) * self._lanes)
        self._redact = Redactor()
        self._client: HttpClient | None = None
        self._checked: list[str] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"HttpModel(protocol={s.protocol!r}, url={self._redact(s.url)!r}, model={s.model!r})"

    @property
    def outputs(self) -> list[str]:
        return self.protocol.outputs

    def lanes(self) -> int:
        """Batches in flight at once (each ``predict`` on a lane thread, all sharing the client's
        ``concurrency`` slots): enough that a batch of fewer requests than ``concurrency`` still fills
        them, plus one, so the next batch's requests go out while the last answers of one are awaited
        (its slowest answer no longer holds every slot idle)."""
        return self._lanes

    # -- setup ------------------------------------------------------------------------------------
    def _headers(self) -> tuple[dict[str, str], list[str]]:
        s: HttpSettings = self.settings
        headers: dict[str, str] = {}
        secrets: list[str] = []
        if s.api_key_env:
            # A key mounted from a file usually ends with a newline: it is not part of the key.
            key = (os.environ.get(s.api_key_env) or "").strip()
            if not key:
                raise ModelLoadError(
                    f"the environment variable {s.api_key_env} (from 'model.api_key_env') is not set or blank",
                    hint=f"export {s.api_key_env}=<the API key> before running the job",
                )
            headers["authorization"] = f"Bearer {key}"
            secrets.append(key)
        for name, value in s.headers.items():
            if not isinstance(value, str):
                raise ModelLoadError(f"header '{name}' must be a string (from 'model.headers')")
            expanded, used = expand_env(value, dict(os.environ), f"model.headers.{name}")
            headers[name] = expanded
            secrets.extend(used)
        return headers, secrets

    def setup(self) -> None:
        try:
            import aiohttp  # noqa: F401 - only to fail early with the install hint
        except ImportError as exc:
            from .. import missing_extra

            raise missing_extra("http", "aiohttp") from exc
        s: HttpSettings = self.settings
        headers, secrets = self._headers()
        self._redact = Redactor(secrets)
        self._client = HttpClient(
            headers=headers,
            redact=self._redact,
            limiter=RateLimiter(self._rpm, self._tpm),
            timeout=s.timeout_seconds,
            max_retries=s.max_retries,
            backoff=s.backoff_seconds,
            max_backoff=s.max_backoff_seconds,
            connections=self.concurrency,
        )
        try:
            if s.health_path or not isinstance(self.protocol, KServeProtocol):
                url = self.protocol.probe_url()
                status, _ = self._client.get(url)
                if s.health_path and not 200 <= status < 300:
                    raise ModelLoadError(
                        f"the health check {url} answered HTTP {status}",
                        hint="wait for the server to be ready, or fix health_path",
                    )
            self.protocol.setup(self._client.get)
        except InfermillError as exc:
            self._client.close()
            self._client = None
            raise self._clean(exc) from None
        # An adapter dropped without close() still closes its connections (no leaked sockets). The garbage
        # collector may run this inside any thread, even one starting up within threading's own locks, so it
        # must not wait for the client's loop thread: joining there can deadlock.
        self._finalizer = weakref.finalize(self, self._client.close, False)

    def close(self) -> None:
        if self._finalizer is not None and self._finalizer.detach() is not None and self._client:
            self._client.close()
        self._client = None

    # -- scoring ----------------------------------------------------------------------------------
    def preprocess(self, batch: pa.RecordBatch) -> Any:
        names = batch.schema.names
        if names != self._checked:
            self.protocol.check_columns(names)
            self._checked = names
        return self.protocol.atoms(batch)

    def predict(self, inputs: Any) -> Any:
        items: list[Atom | ItemError] = inputs
        values: list[Any] = [None] * len(items)
        errors: dict[int, InfermillError] = {}
        pending: dict[str, list[int]] = {}
        atoms: dict[str, Atom] = {}
        for i, item in enumerate(items):
            if isinstance(item, InfermillError):
                errors[i] = item
                continue
            known = self._answers.get(item.key)
            if known is _MISS:
                pending.setdefault(item.key, []).append(i)
                atoms[item.key] = item
            elif isinstance(known, InfermillError):
                errors[i] = known
            else:
                values[i] = known
        if pending:
            self._send_all(pending, atoms, values, errors)
        for i, item in enumerate(items):
            if isinstance(item, Atom) and i not in errors:
                self._answers.drop(item.key)  # handed to the engine: it will not ask again
        if not errors:
            return values
        first = min(errors)
        if len(items) == 1:
            raise self._clean(errors[first])
        # Answers received are kept: the engine writes them and deals with each failed row by its own error.
        cleaned: dict[int, InfermillError] = {}
        own: dict[int, InfermillError] = {}
        for i, error in errors.items():
            if id(error) not in cleaned:
                cleaned[id(error)] = self._clean(error)
            own[i] = cleaned[id(error)]
        raise PartialBatchError(
            f"{len(errors)} of {len(items)} rows failed; row {first}: {own[first].message}",
            result=[v for i, v in enumerate(values) if i not in errors],
            errors=own,
        )

    def _send_all(
        self,
        pending: dict[str, list[int]],
        atoms: dict[str, Atom],
        values: list[Any],
        errors: dict[int, InfermillError],
    ) -> None:
        if self._client is None:
            raise ModelLoadError("HttpModel.predict() called before setup()")
        keys = list(pending)
        size = self.protocol.group_size
        groups = [keys[j : j + size] for j in range(0, len(keys), size)]
        outcomes = self._client.run(self._send_groups([[atoms[k] for k in g] for g in groups]))
        fatal: InfermillError | None = None
        for group, outcome in zip(groups, outcomes, strict=True):
            if outcome is None:  # cancelled after a fatal error
                continue
            rows, error = outcome
            if error is None:
                for key, value in zip(group, rows, strict=True):
                    self._answers.put(key, value)
                    for i in pending[key]:
                        values[i] = value
                continue
            if _fatal(error):
                fatal = fatal or error
                continue
            # A transient error is not kept: the engine's retry sends the request again. An item error of a
            # one-row request is that row's verdict; a request of several rows is split by the engine.
            if isinstance(error, ItemError) and len(group) == 1:
                self._answers.put(group[0], error)
            for key in group:
                for i in pending[key]:
                    errors[i] = error
        if fatal is not None:
            raise self._clean(fatal)

    async def _send_groups(self, groups: list[list[Atom]]) -> list[_Outcome | None]:
        """Send every request at once (the client's semaphore keeps ``concurrency`` in flight); the first
        fatal error cancels the requests not answered yet, whose outcome stays None."""
        outcomes: list[_Outcome | None] = [None] * len(groups)

        async def send(i: int) -> None:
            outcomes[i] = outcome = await self._send(groups[i])
            if outcome[1] is not None and _fatal(outcome[1]):
                for task in tasks:
                    task.cancel()  # a no-op on the tasks already done, this one included

        tasks = [asyncio.create_task(send(i)) for i in range(len(groups))]
        await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes

    async def _send(self, group: list[Atom]) -> _Outcome:
        """One request on the client's loop; returns the rows' values, or the error (never raises)."""
        assert self._client is not None
        try:
            body = dumps(self.protocol.body(group)).encode()
        except ValueError as exc:
            return [], ItemError(f"the request cannot be sent as JSON: {exc}")
        tokens = sum(a.tokens for a in group)
        try:
            reply = await self._client.post(self.protocol.endpoint, body, tokens)
            self._client.limiter.used(tokens, self.protocol.usage(reply.data))
            if self.settings.keep_response:  # the answer is written out: a server may have echoed a secret
                return self.protocol.parse(reply.data, self._redact(reply.text), len(group)), None
            try:
                return self.protocol.parse(reply.data, reply.text, len(group)), None
            except InfermillError:
                pass
            # The message quotes the answer, cut short: parse again (it is pure) to cut it from a redacted text.
            text = self._redact.head(reply.text, 2 * EXCERPT_CHARS)
            return self.protocol.parse(reply.data, text, len(group)), None
        except InfermillError as exc:
            log.debug("request of %d row(s) failed: %s", len(group), exc.message)
            return [], exc
        except Exception as exc:  # noqa: BLE001 - an unexpected answer shape: this request's rows fail
            return [], ItemError(f"cannot read the answer: {type(exc).__name__}: {exc}")

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        columns = self.protocol.columns(list(result))
        for name, column in columns.items():
            if len(column) != num_rows:
                raise ItemError(f"output '{name}' has {len(column)} values for {num_rows} rows")
        return {n: columns[n] for n in self.outputs}

    def _clean(self, exc: InfermillError) -> InfermillError:
        """The same error with every secret value redacted (servers may echo what they were sent)."""
        hint = self._redact(exc.hint) if exc.hint else None
        return type(exc)(self._redact(exc.message), hint=hint)

    def classify_error(self, exc: BaseException) -> str | None:
        """aiohttp errors that escape (they should not) are transient: the network, not the row."""
        module = type(exc).__module__ or ""
        return "transient" if module.startswith("aiohttp") else None

    def fingerprint(self) -> str:
        s: HttpSettings = self.settings
        return digest("http", s.protocol, self.protocol.endpoint, s.model, s.revision)[:16]


def _fatal(error: InfermillError) -> bool:
    """An error that stops the job (every request would fail): neither transient nor one request's fault."""
    return not error.transient and not isinstance(error, ItemError)


def _check(s: HttpSettings) -> None:
    parts = urlsplit(s.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelLoadError(
            f"model.url must be an http:// or https:// URL with a host, not {s.url!r}",
            hint='e.g. url = "http://127.0.0.1:8000"',
        )
    if parts.username or parts.password:
        raise ModelLoadError(
            "model.url must not carry credentials", hint="put the key in an environment variable: api_key_env"
        )
    numbers = {
        "concurrency": s.concurrency,
        "batch_size": s.batch_size,
        "timeout_seconds": s.timeout_seconds,
        "requests_per_minute": s.requests_per_minute,
        "tokens_per_minute": s.tokens_per_minute,
        "embedding_size": s.embedding_size,
        "max_tokens": s.max_tokens,
    }
    for key, value in numbers.items():
        if value is not None and value <= 0:
            raise ModelLoadError(f"model.{key} must be positive, not {value}")
    for key, value in {
        "max_retries": s.max_retries,
        "backoff_seconds": s.backoff_seconds,
        "max_backoff_seconds": s.max_backoff_seconds,
    }.items():
        if value < 0:
            raise ModelLoadError(f"model.{key} must not be negative, not {value}")
    if s.protocol in ("openai-chat", "openai-embeddings") and s.prompt_column and s.prompt_template:
        raise ModelLoadError("set prompt_column or prompt_template, not both")
    if s.body_column and (s.prompt_column or s.prompt_template):
        raise ModelLoadError("body_column sends the whole body; prompt_column/prompt_template would be ignored")
    wrong = misplaced_keys(s)
    if wrong:
        raise ModelLoadError(
            f"model.{wrong[0]} does not apply to protocol '{s.protocol}'",
            hint="see docs/models/http.md for the keys of each protocol",
        )
