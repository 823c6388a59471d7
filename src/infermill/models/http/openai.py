"""``protocol = "openai-chat"`` and ``"openai-embeddings"``: OpenAI-compatible servers (OpenAI, vLLM,
llama.cpp, TGI, Ollama...).

Chat sends one request per row: ``{"model", "messages": [{"role": "user", "content": <prompt>}],
"max_tokens", "temperature", **extra_body}`` (a ``system_prompt`` adds a system message first), or the
row's own body from ``body_column`` (the openai-batch input's ``body``), with ``stream`` removed and
``model`` filled in when missing. Outputs: ``text``, ``prompt_tokens``, ``completion_tokens``,
``finish_reason`` and, with ``keep_response``, ``response_body`` (the response JSON, verbatim).

Embeddings send ``batch_size`` texts per request, ``{"model", "input": [...], **extra_body}``, and give
``embedding``, a fixed-size float32 list (base64 answers are decoded too).
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import ItemError, ModelLoadError
from .protocol import Atom, HttpProtocol, digest, dumps, response_excerpt, with_path
from .settings import HttpSettings

__all__ = ["ChatProtocol", "EmbeddingsProtocol"]

CHAT_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "finish_reason": pa.string(),
    "response_body": pa.string(),
}


def openai_url(url: str, route: str) -> str:
    """``url`` + ``/v1`` + ``route`` when it has no path, + ``route`` when its path ends in /v1."""
    from urllib.parse import urlsplit

    path = urlsplit(url).path.rstrip("/")
    if not path:
        return with_path(url, "/v1" + route)
    if path.endswith("/v1"):
        return with_path(url, route)
    return url


class _Texts:
    """The text of each row: a column, or a template over columns."""

    def __init__(self, settings: HttpSettings) -> None:
        self.column = settings.prompt_column
        self.template = settings.prompt_template
        self.fields: list[str] = []
        if self.template is not None:
            try:
                self.fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
            except ValueError as exc:
                raise ModelLoadError(
                    f"invalid prompt_template: {exc}", hint="write {column} for a value and {{ }} for braces"
                ) from None
            bad = [f for f in self.fields if not f.isidentifier() and f]
            if "" in self.fields or bad:
                raise ModelLoadError(
                    f"prompt_template placeholders must be column names, got {bad or ['{}']}",
                    hint="write {column}; use {{ and }} for literal braces",
                )

    def needs(self, names: list[str]) -> list[str]:
        if self.template is not None:
            return list(dict.fromkeys(self.fields))
        if self.column is not None:
            return [self.column]
        if len(names) != 1:
            raise ModelLoadError(
                f"cannot tell which of the feature columns {names} holds the text",
                hint="set prompt_column (or prompt_template, or features = [one column])",
            )
        return names

    def texts(self, batch: pa.RecordBatch) -> list[str | ItemError]:
        names = batch.schema.names
        needed = self.needs(names)
        values = {n: batch.column(names.index(n)).to_pylist() for n in needed}
        out: list[str | ItemError] = []
        for i in range(batch.num_rows):
            row = {n: values[n][i] for n in needed}
            nulls = [n for n, v in row.items() if v is None]
            if nulls:
                out.append(ItemError(f"column(s) {nulls} are null, so there is no text to send"))
            elif self.template is not None:
                try:
                    out.append(self.template.format_map(row))
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    out.append(ItemError(f"prompt_template cannot format this row: {type(exc).__name__}: {exc}"))
            else:
                out.append(str(row[needed[0]]))
        return out


class ChatProtocol(HttpProtocol):
    name = "openai-chat"

    def __init__(self, settings: HttpSettings, outputs: list[str] | None) -> None:
        super().__init__(settings, outputs)
        self._texts = _Texts(settings)
        self._body_column = settings.body_column
        available = list(CHAT_TYPES)
        for name in outputs or []:
            if name not in available:
                raise ModelLoadError(
                    f"openai-chat has no output '{name}' (from 'model.outputs')",
                    hint=f"choose from {available}" + ("" if settings.keep_response else "; response_body needs "
                                                       "keep_response = true"),
                )
        if "response_body" in (outputs or []) and not settings.keep_response:
            raise ModelLoadError("output 'response_body' needs keep_response = true")

    @property
    def endpoint(self) -> str:
        return openai_url(self.settings.url, "/chat/completions")

    @property
    def outputs(self) -> list[str]:
        if self.configured_outputs:
            return list(self.configured_outputs)
        names = ["text", "prompt_tokens", "completion_tokens", "finish_reason"]
        return names + (["response_body"] if self.settings.keep_response else [])

    def _body_mode(self, names: list[str]) -> str | None:
        s = self.settings
        if self._body_column is not None:
            return self._body_column
        if s.prompt_column is None and s.prompt_template is None and "body" in names:
            return "body"
        return None

    def check_columns(self, names: list[str]) -> None:
        column = self._body_mode(names)
        needed = [column] if column else self._texts.needs(names)
        missing = [n for n in needed if n not in names]
        if missing:
            raise ModelLoadError(
                f"openai-chat needs the column(s) {missing}, which are not among the features {names}",
                hint="add them to [model] features, or fix prompt_column / prompt_template / body_column",
            )

    def atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        names = batch.schema.names
        column = self._body_mode(names)
        if column is not None:
            return [self._body_atom(v) for v in batch.column(names.index(column)).to_pylist()]
        s = self.settings
        out: list[Atom | ItemError] = []
        for text in self._texts.texts(batch):
            if isinstance(text, ItemError):
                out.append(text)
                continue
            messages = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
            messages.append({"role": "user", "content": text})
            body: dict[str, Any] = {"model": s.model} if s.model else {}
            body["messages"] = messages
            if s.max_tokens is not None:
                body["max_tokens"] = s.max_tokens
            if s.temperature is not None:
                body["temperature"] = s.temperature
            body.update(s.extra_body)
            out.append(self._atom(body))
        return out

    def _body_atom(self, value: Any) -> Atom | ItemError:
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError as exc:
                return ItemError(f"the request body is not valid JSON: {exc}")
        if not isinstance(value, dict):
            return ItemError(f"the request body must be a JSON object, not {type(value).__name__}")
        body = dict(value)
        body.pop("stream", None)  # one JSON answer per request
        if self.settings.model and "model" not in body:
            body["model"] = self.settings.model
        return self._atom(body)

    def _atom(self, body: dict[str, Any]) -> Atom | ItemError:
        try:
            text = dumps(body)
        except ValueError as exc:
            return ItemError(f"the request cannot be sent as JSON: {exc}")
        completion = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        tokens = _prompt_chars(body) / 4 + (completion if isinstance(completion, int) else 0)
        return Atom(digest(text), body, tokens)

    def body(self, atoms: list[Atom]) -> Any:
        return atoms[0].payload

    def parse(self, data: Any, text: str, count: int) -> list[Any]:
        try:
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ItemError(f"the answer has no choices[0].message: {response_excerpt(text)}") from None
        if content is not None and not isinstance(content, str):
            content = dumps(content)
        usage = data.get("usage") or {}
        row = {
            "text": content,
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "completion_tokens": _int(usage.get("completion_tokens")),
            "finish_reason": choice.get("finish_reason"),
            "response_body": text,
        }
        return [row]

    def usage(self, data: Any) -> float | None:
        usage = data.get("usage") if isinstance(data, dict) else None
        total = _int(usage.get("total_tokens")) if isinstance(usage, dict) else None
        return float(total) if total is not None else None

    def columns(self, rows: list[Any]) -> dict[str, pa.Array]:
        return {n: pa.array([r[n] for r in rows], CHAT_TYPES[n]) for n in self.outputs}


def _prompt_chars(body: dict[str, Any]) -> int:
    """Characters of the messages' text (the whole body when it has no plain messages)."""
    messages = body.get("messages")
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        contents = [m.get("content") for m in messages]
        if all(isinstance(c, str) for c in contents):
            return sum(len(c) for c in contents)
    return len(dumps(body))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class EmbeddingsProtocol(HttpProtocol):
    name = "openai-embeddings"

    def __init__(self, settings: HttpSettings, outputs: list[str] | None) -> None:
        super().__init__(settings, outputs)
        if settings.body_column is not None:
            raise ModelLoadError("body_column applies to openai-chat only")
        if outputs and outputs != ["embedding"]:
            raise ModelLoadError(
                f"openai-embeddings gives one output, 'embedding', not {outputs} (from 'model.outputs')",
                hint="remove model.outputs",
            )
        self.group_size = settings.batch_size
        self._texts = _Texts(settings)
        self.size = settings.embedding_size
        """The vector length: from embedding_size, else the first answer."""

    @property
    def endpoint(self) -> str:
        return openai_url(self.settings.url, "/embeddings")

    @property
    def outputs(self) -> list[str]:
        return ["embedding"]

    def check_columns(self, names: list[str]) -> None:
        missing = [n for n in self._texts.needs(names) if n not in names]
        if missing:
            raise ModelLoadError(
                f"openai-embeddings needs the column(s) {missing}, which are not among the features {names}",
                hint="add them to [model] features, or fix prompt_column / prompt_template",
            )

    def atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        return [
            t if isinstance(t, ItemError) else Atom(digest(t), t, len(t) / 4) for t in self._texts.texts(batch)
        ]

    def body(self, atoms: list[Atom]) -> Any:
        body: dict[str, Any] = {"model": self.settings.model} if self.settings.model else {}
        body["input"] = [a.payload for a in atoms]
        body.update(self.settings.extra_body)
        return body

    def parse(self, data: Any, text: str, count: int) -> list[Any]:
        try:
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [_vector(d["embedding"]) for d in items]
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ItemError(f"the answer has no data[].embedding: {response_excerpt(text)}") from None
        if len(vectors) != count:
            raise ItemError(f"sent {count} inputs but got {len(vectors)} embeddings back")
        for v in vectors:
            if self.size is None:
                self.size = len(v)
            if len(v) != self.size:
                raise ModelLoadError(
                    f"the server returned an embedding of {len(v)} values, expected {self.size}",
                    hint="set embedding_size to what the model returns (or remove it)",
                )
        return vectors

    def usage(self, data: Any) -> float | None:
        usage = data.get("usage") if isinstance(data, dict) else None
        if not isinstance(usage, dict):
            return None
        total = _int(usage.get("total_tokens")) or _int(usage.get("prompt_tokens"))
        return float(total) if total is not None else None

    def columns(self, rows: list[Any]) -> dict[str, pa.Array]:
        if self.size is None:
            raise ItemError(
                "the embedding size is unknown before the first answer",
                hint="set embedding_size to type an empty batch",
            )
        matrix = np.stack(rows) if rows else np.empty((0, self.size), np.float32)
        flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
        return {"embedding": pa.FixedSizeListArray.from_arrays(flat, self.size)}


def _vector(value: Any) -> np.ndarray:
    if isinstance(value, str):  # encoding_format = "base64": little-endian float32
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) for x in value):
        raise ValueError("not a list of numbers")
    return np.asarray(value, dtype=np.float32)
