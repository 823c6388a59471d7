"""The ``[model]`` keys of ``kind = "http"`` (one docstring each; docs/models/http.md lists them too)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["PROTOCOL_KEYS", "HttpSettings", "Protocol", "misplaced_keys"]

Protocol = Literal["openai-chat", "openai-embeddings", "kserve-v2", "json"]


@dataclass(frozen=True)
class HttpSettings:
    """How to reach the model server and shape its requests."""

    protocol: Protocol
    """openai-chat, openai-embeddings, kserve-v2 or json."""
    url: str
    """Base URL of the server (http or https). openai protocols append /v1/chat/completions or
    /v1/embeddings when the URL has no path (only /chat/completions or /embeddings when the path ends in
    /v1); kserve-v2 appends /v2/models/{model}/infer when the URL has no path; json uses the URL as is."""
    model: str | None = None
    """Model name: sent as "model" by the openai protocols; the {model} of kserve-v2's path."""
    revision: str | None = None
    """A label you change when the server's model changes (the server's weights are not visible to
    infermill); part of the model fingerprint, so a new revision is never mixed with old results."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key, sent as Authorization: Bearer <key>. The
    value never appears in messages, dead letters or reports."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers; a value may reference environment variables as "${NAME}" (redacted like the
    key)."""
    concurrency: int = 8
    """Most requests in flight at once, for the whole job (split between runtime.workers)."""
    requests_per_minute: float | None = None
    """Client-side request rate limit for the whole job (split between workers); retries count."""
    tokens_per_minute: float | None = None
    """Client-side token rate limit for the whole job (split between workers). A request is estimated at
    one token per 4 characters sent (plus max_tokens for chat) and corrected by the usage the server
    reports."""
    timeout_seconds: float = 60.0
    """Per request: longest wait to connect, and between bytes of the response."""
    max_retries: int = 4
    """Retries per request after a 408/425/429, a 5xx, a timeout or a connection error, before the batch
    fails as transient (and the engine's [retry] takes over)."""
    backoff_seconds: float = 0.5
    """First retry wait (doubled per retry, full jitter), unless the server sends Retry-After."""
    max_backoff_seconds: float = 30.0
    """Longest wait between retries, including a server's Retry-After."""
    health_path: str | None = None
    """Path fetched once at setup (e.g. "/health"); it must answer 2xx. Without it, setup only checks
    that the server accepts a connection (kserve-v2 reads the model's metadata instead)."""
    prompt_column: str | None = None
    """openai protocols: the column holding the prompt (chat) or the text to embed (embeddings)."""
    prompt_template: str | None = None
    """openai protocols: the text built from columns, e.g. "Summarise: {title}\\n{body}" ({{ and }} for
    literal braces). Default: the prompt_column, or the one feature column."""
    system_prompt: str | None = None
    """openai-chat: a system message sent before the prompt."""
    body_column: str | None = None
    """openai-chat: a column holding the whole request body (a JSON string or a struct), sent as is.
    Default: the feature column named "body" when neither prompt key is set."""
    max_tokens: int | None = None
    """openai-chat: "max_tokens" of each request (omitted when unset)."""
    temperature: float | None = 0.0
    """openai-chat: "temperature" of each request (0.0, for repeatable answers)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """openai protocols and kserve-v2: more top-level request fields, e.g. {seed = 1, top_p = 0.9}."""
    keep_response: bool = False
    """openai-chat: add a response_body column with the server's JSON response, verbatim."""
    batch_size: int = 64
    """openai-embeddings and kserve-v2: rows per request (chat and json send one request per row)."""
    embedding_size: int | None = None
    """openai-embeddings: the expected vector length (checked); needed only to type an empty batch before
    the first response."""
    input_name: str | None = None
    """kserve-v2, input_layout = "matrix": the input tensor's name. Default: the model's single input
    from its metadata, else "input-0"."""
    datatype: str | None = None
    """kserve-v2, input_layout = "matrix": the input tensor's datatype (FP32, FP64, INT64, ...). Default:
    from the model's metadata, else FP32."""
    input_layout: Literal["matrix", "columns"] = "matrix"
    """kserve-v2: "matrix" sends one [rows, features] tensor; "columns" sends one [rows] tensor per
    feature, named after it, typed from the column."""
    request_template: Any = None
    """json: the request body, a table (or array) whose strings may be "{column}" (the column's value,
    keeping its JSON type), text with {column} placeholders (a string), or "$row" (an object of every
    feature). Default: "$row"."""
    response_path: str | dict[str, str] | None = None
    """json: a dotted path into the response (e.g. "predictions.0.score"; numbers index arrays), or a table
    of output name to path. Default: the whole response."""
    output_types: dict[str, str] = field(default_factory=dict)
    """kserve-v2 and json: Arrow type per output ("float64", "int64", "string", "bool", "json",
    "list<float32>", ...); values are cast to it. Default: from the response (json numbers are float64)."""


_OPENAI = {"openai-chat", "openai-embeddings"}
PROTOCOL_KEYS: dict[str, set[str]] = {
    "prompt_column": _OPENAI,
    "prompt_template": _OPENAI,
    "system_prompt": {"openai-chat"},
    "body_column": {"openai-chat"},
    "max_tokens": {"openai-chat"},
    "temperature": {"openai-chat"},
    "keep_response": {"openai-chat"},
    "extra_body": _OPENAI | {"kserve-v2"},
    "batch_size": {"openai-embeddings", "kserve-v2"},
    "embedding_size": {"openai-embeddings"},
    "input_name": {"kserve-v2"},
    "datatype": {"kserve-v2"},
    "input_layout": {"kserve-v2"},
    "request_template": {"json"},
    "response_path": {"json"},
    "output_types": {"kserve-v2", "json"},
}
"""Keys that only some protocols read; setting one for another protocol is an error."""


def misplaced_keys(settings: HttpSettings) -> list[str]:
    """Keys set (to a non-default value) that the chosen protocol does not use."""
    defaults = {f.name: f.default for f in fields(HttpSettings)}
    out = []
    for key, protocols in PROTOCOL_KEYS.items():
        value = getattr(settings, key)
        default = defaults[key]
        unset = value == default or (not isinstance(default, (str, int, float, bool, type(None))) and not value)
        if not unset and settings.protocol not in protocols:
            out.append(key)
    return out

