"""One HTTP client per adapter: secrets, retries with backoff and Retry-After, and error classes. Requests
are coroutines of aiohttp on one event loop per client (:mod:`.loop`), so concurrency costs no threads.

What a response means::

    2xx                         the answer
    408, 425, 429, other 5xx    retried (max_retries) with backoff, honouring Retry-After; then
    timeout, connection error   TransientError, which the engine retries again before dead-lettering
    401, 403, 404, 405, 501,    ModelLoadError: every request would fail (key, URL, model or protocol is
    505                         wrong)
    any other 4xx               ItemError for the rows of that request (status and a truncated body)

Messages carry the status, the URL and at most ``BODY_CHARS`` of the body, never headers, and every
secret value (the API key, headers that reference environment variables) is replaced by ``***``: also
when a server echoes it escaped or encoded (JSON escapes such as ``\\/`` and ``\\u002f``, URL encoding,
HTML character references, base64 at any offset of an encoded blob). A body is redacted whole before it
is cut to ``BODY_CHARS``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ...backoff import full_jitter
from ...errors import InfermillError, ItemError, ModelLoadError, TransientError
from .loop import LoopThread
from .ratelimit import RateLimiter

__all__ = ["BODY_CHARS", "HttpClient", "Redactor", "expand_env", "parse_retry_after"]

BODY_CHARS = 500
RETRY_STATUS = frozenset({408, 425, 429})
FATAL_STATUS = frozenset({401, 403, 404, 405, 501, 505})
T = TypeVar("T")


def _retryable(status: int) -> bool:
    return status in RETRY_STATUS or (status >= 500 and status not in FATAL_STATUS)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_HTML_NAMES = {'"': ["quot"], "&": ["amp"], "<": ["lt"], ">": ["gt"], "'": ["apos"]}
BASE64_MIN_CHARS = 6
"""Secrets of fewer characters are not looked for in base64 (their encoded core would match by chance)."""


def _hex(digits: str) -> str:
    """A pattern for hex ``digits`` in either case."""
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in digits)


def _char_pattern(char: str) -> str:
    """Every form one character of a secret takes when a server writes it escaped or encoded: as is,
    JSON-escaped (``\\/``, ``\\u002f``, ``\\n``, escaped again any number of times), URL-encoded (also
    twice: ``%252F``), ``+`` for a space, an HTML character reference."""
    code = ord(char)
    units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
    # After any run of backslashes (a string escaped again): the character, its \u escape, its short escape.
    json_forms = [re.escape(char), r"\\u" + r"\\+u".join(_hex(f"{u:04x}") for u in units)]
    if char in _SHORT_ESCAPES:
        json_forms.append(r"\\" + re.escape(_SHORT_ESCAPES[char]))
    forms = [r"\\*(?:" + "|".join(json_forms) + ")"]
    forms.append("".join("%(?:25)*" + _hex(f"{b:02x}") for b in char.encode()))
    if char == " ":
        forms.append(r"\+")
    forms.append(f"&#0*{code};")
    forms.append("&#[xX]0*" + _hex(f"{code:x}") + ";")
    forms.extend(f"&{name};" for name in _HTML_NAMES.get(char, []))
    return "(?:" + "|".join(forms) + ")"


def base64_cores(secret: str) -> list[str]:
    """The base64 text that encodes ``secret`` wherever it starts in an encoded blob (three alignments),
    without the characters shared with its neighbours; standard and URL-safe alphabets."""
    raw = secret.encode()
    cores: list[str] = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[(8 * offset + 5) // 6 : (8 * (offset + len(raw))) // 6]
        if len(core) >= BASE64_MIN_CHARS:
            cores += [core, core.translate(str.maketrans("+/", "-_"))]
    return cores


class Redactor:
    """Replaces secret values in text with ``***``, in the forms a server may echo them (see the module
    docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s}
        forms = set(values)
        for value in values:
            if len(value) >= BASE64_MIN_CHARS:
                forms.update(base64_cores(value))
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(forms, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join("".join(_char_pattern(c) for c in s) for s in self._secrets)) if forms else None
        )
        # Room for one escaped or encoded secret (up to 16 characters for each of its own).
        self._margin = 16 * max((len(s) for s in self._secrets), default=0)

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub("***", text)

    def head(self, text: str, chars: int) -> str:
        """At least the first ``chars`` characters of the redacted ``text`` (all of it when shorter), without
        redacting all of a long text (a megabyte takes a good part of a second)."""
        if self._pattern is None:
            return text[:chars]
        window = chars + 2 * self._margin
        while True:
            redacted = self(text[:window])
            if window >= len(text):
                return redacted
            if len(redacted) >= chars + self._margin:
                return redacted[: len(redacted) - self._margin]  # the end may hold a secret cut by the window
            window *= 2

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret forms)"


def expand_env(value: str, environ: dict[str, str], where: str) -> tuple[str, list[str]]:
    """Replace ``${NAME}`` references in ``value``; return the text and the values used (secrets)."""
    used: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ModelLoadError(
                f"environment variable {name} is not set (referenced by {where})",
                hint=f"export {name}=... before running the job",
            )
        # Surrounding whitespace (a secret mounted from a file ends with a newline) is not part of a value.
        value = environ[name].strip()
        used.append(value)
        return value

    return _ENV_REF.sub(sub, value), used


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date; None when absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _retry_after(headers: Any) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


@dataclass(frozen=True)
class Reply:
    """A successful (2xx) response."""

    status: int
    text: str
    data: Any
    """The parsed JSON body."""


_JSON_HEADERS = {"content-type": "application/json"}


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _ssl_context() -> ssl.SSLContext:
    """The system's certificates (and SSL_CERT_FILE), plus certifi's bundle where it is installed, as httpx
    trusted before: a slim image without system certificates keeps working."""
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:
        return context
    context.load_verify_locations(certifi.where())
    return context


class HttpClient:
    """Sends requests with retries, at most ``connections`` at once, from an event loop on a thread of its
    own (see :mod:`.loop`). ``post`` is a coroutine for that loop (hand it over with :meth:`run`); it returns
    a :class:`Reply` or raises ItemError, TransientError or ModelLoadError (already redacted). ``get`` is
    called from any other thread."""

    def __init__(
        self,
        *,
        headers: dict[str, str],
        redact: Redactor,
        limiter: RateLimiter,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        connections: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.redact = redact
        self.limiter = limiter
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._rng = random.Random()
        self._loop = LoopThread()
        self._slots: asyncio.Semaphore | None = None
        self._proxies: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._session = self._loop.run(self._open(headers, connections))

    async def _open(self, headers: dict[str, str], connections: int) -> Any:
        aiohttp = self._aiohttp
        # Created on the loop: both belong to it. The semaphore bounds the requests in flight (retries and their
        # backoff included, as a thread per request did); the connector never needs more connections than that.
        self._slots = asyncio.Semaphore(connections)
        # Not trust_env: aiohttp then reads ~/.netrc in a thread on EVERY request (a third of the client's CPU
        # at concurrency 128). The proxy of HTTP(S)_PROXY / NO_PROXY is looked up once per host instead.
        return aiohttp.ClientSession(
            headers=headers,
            # timeout_seconds bounds the wait to connect and between bytes of the answer, not a slow answer's
            # whole transfer (a long generation streaming its body is fine).
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout),
            connector=aiohttp.TCPConnector(limit=connections + 1, ssl=_ssl_context()),  # + 1: the probe, metadata
        )

    def __repr__(self) -> str:
        return f"HttpClient(timeout={self.timeout}, max_retries={self.max_retries})"

    def _proxy(self, url: str) -> dict[str, Any]:
        """``proxy`` / ``proxy_auth`` for a request to ``url`` from HTTP(S)_PROXY and NO_PROXY (as httpx read
        them), looked up once per scheme and host: the environment is the process's, read at first use."""
        from yarl import URL

        parsed = URL(url)
        key = (parsed.scheme, parsed.host)
        found = self._proxies.get(key)
        if found is None:
            try:
                proxy, auth = self._aiohttp.helpers.get_env_proxy_for_url(parsed)
                found = {"proxy": proxy, "proxy_auth": auth}
            except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
                found = {}
            self._proxies[key] = found
        return found

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        return self._loop.run(coro)

    def close(self, wait: bool = True) -> None:
        """Cancel what is in flight, close the connections and stop the loop (waiting for that when ``wait``)."""
        self._loop.stop(self._session.close, wait=wait)

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        return full_jitter(attempt, self.backoff, self.max_backoff, self._rng)

    def _body_excerpt(self, text: str) -> str:
        # Redacted before it is cut: a cut through a secret would leave the rest of it unredacted.
        text = text.strip()
        excerpt = self.redact.head(text, BODY_CHARS + 1)
        if len(excerpt) > BODY_CHARS:
            excerpt = excerpt[:BODY_CHARS] + f"... ({len(text)} chars)"
        return excerpt

    def _unsendable(self, url: str, exc: ValueError) -> ModelLoadError:
        return ModelLoadError(
            f"cannot send a request to {url}: {self.redact(str(exc))}",
            hint="check [model] headers and the value of the api_key_env variable (no control characters)",
        )

    async def post(self, url: str, body: bytes, tokens: float = 0.0) -> Reply:
        """POST ``body`` (JSON) to ``url``, retrying transient failures; ``tokens`` is the request's
        estimate for the token rate limit."""
        assert self._slots is not None
        async with self._slots:
            return await self._post(url, body, tokens)

    async def _post(self, url: str, body: bytes, tokens: float) -> Reply:
        aiohttp = self._aiohttp
        last: InfermillError | None = None
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await self._sleep(self._wait(attempt, retry_after))
                retry_after = None
            await self.limiter.wait(tokens, self._sleep)
            try:
                async with self._session.post(
                    url, data=body, headers=_JSON_HEADERS, allow_redirects=False, **self._proxy(url)
                ) as response:
                    raw = await response.read()
                    status, headers, charset = response.status, response.headers, response.charset
            except ValueError as exc:  # a header aiohttp will not send: every request would fail alike
                raise self._unsendable(url, exc) from None
            except TimeoutError:  # before ClientError: aiohttp's timeouts are both
                last = TransientError(f"no answer from {url} within timeout_seconds = {self.timeout}")
                continue
            except aiohttp.ClientError as exc:
                last = TransientError(f"cannot reach {url}: {type(exc).__name__}: {self.redact(str(exc))}")
                continue
            text = _decode(raw, charset)
            if 200 <= status < 300:
                try:
                    data = json.loads(text)
                except ValueError:
                    raise ItemError(f"HTTP {status} from {url} is not JSON: {self._body_excerpt(text)}") from None
                return Reply(status, text, data)
            message = f"HTTP {status} from {url}: {self._body_excerpt(text)}"
            if _retryable(status):
                last = TransientError(message + f" (after {attempt + 1} attempts)")
                retry_after = _retry_after(headers)
                if retry_after is not None and status in (429, 503):
                    # Every request holds back, not only this one: the server asked the client to wait.
                    self.limiter.pause_until(time.monotonic() + min(self.max_backoff, retry_after))
                continue
            if status in FATAL_STATUS:
                raise ModelLoadError(
                    message,
                    hint={
                        401: "the server refused the credentials: check api_key_env and headers",
                        403: "the credentials may not use this model or endpoint: check api_key_env",
                        404: "check url (and model): the server has no such endpoint or model",
                        405: "check url: the endpoint does not accept POST",
                        501: "check url and protocol: the server does not implement this endpoint",
                        505: "the server does not speak HTTP/1.1",
                    }[status],
                )
            raise ItemError(message, hint="the server rejected this request; check the row's values")
        assert last is not None
        raise last

    def get(self, url: str) -> tuple[int, Any]:
        """One GET (the health probe and metadata): the status and the parsed JSON (or None). A server
        that cannot be reached is a ModelLoadError."""
        return self._loop.run(self._get(url))

    async def _get(self, url: str) -> tuple[int, Any]:
        aiohttp = self._aiohttp
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await self._sleep(self._wait(attempt, None))
            try:
                async with self._session.get(url, allow_redirects=False, **self._proxy(url)) as response:
                    raw = await response.read()
                    status, charset = response.status, response.charset
            except ValueError as exc:
                raise self._unsendable(url, exc) from None
            except aiohttp.ClientConnectorError as exc:
                raise ModelLoadError(
                    f"cannot connect to {url}: {self.redact(str(exc)) or type(exc).__name__}",
                    hint="start the model server, or fix [model] url",
                ) from None
            except (TimeoutError, aiohttp.ClientError) as exc:  # timeouts, resets: worth another try
                error = f"{type(exc).__name__}: {self.redact(str(exc))}"
                continue
            text = _decode(raw, charset)
            if _retryable(status):
                error = f"HTTP {status}: {self._body_excerpt(text)}"
                continue
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            return status, data
        raise ModelLoadError(
            f"the server at {url} did not answer properly after {self.max_retries + 1} attempts ({error})",
            hint="check that the model server is up and healthy",
        )
