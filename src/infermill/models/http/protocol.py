"""What every protocol provides: rows to request pieces ("atoms"), pieces to request bodies, responses to
per-row values, and per-row values to typed output columns.

An atom is one row's share of a request, with a key that identifies the request it would make. The
adapter caches answers by key, so when the engine retries or bisects a batch, rows already answered are
not sent again.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from ...errors import ItemError, ModelLoadError
from ..outputs import to_array
from .settings import HttpSettings

__all__ = ["EXCERPT_CHARS", "JSON_TYPE", "Atom", "HttpProtocol", "arrow_type", "digest", "dumps", "with_path"]

JSON_TYPE = "json"
"""The output type that writes a value as JSON text."""


@dataclass(frozen=True)
class Atom:
    """One row's part of a request."""

    key: str
    """Identifies the request this row makes (same key, same answer)."""
    payload: Any
    """The row's JSON-able part of the request body."""
    tokens: float
    """Estimated tokens, for tokens_per_minute."""


def dumps(value: Any) -> str:
    """Compact JSON; NaN and infinity are refused (JSON has no such numbers)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def digest(*parts: Any) -> str:
    return hashlib.sha256(dumps(list(parts)).encode()).hexdigest()[:32]


def with_path(url: str, path: str) -> str:
    """``url`` with ``path`` appended to its path."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, ""))


def arrow_type(text: str, where: str) -> pa.DataType | str:
    """An output type name: an Arrow alias ("float64", "int64", "string", "bool"...), "list<...>", or
    "json" (returned as the string ``JSON_TYPE``)."""
    name = text.strip()
    if name == JSON_TYPE:
        return JSON_TYPE
    if name.startswith("list<") and name.endswith(">"):
        inner = arrow_type(name[5:-1], where)
        if isinstance(inner, str):
            raise ModelLoadError(f"{where}: a list of json is not a type; use \"json\"")
        return pa.list_(inner)
    try:
        return pa.type_for_alias(name)
    except ValueError:
        raise ModelLoadError(
            f"{where}: unknown output type {text!r}",
            hint='use an Arrow type name ("float64", "float32", "int64", "string", "bool"), "list<float32>", '
            'or "json"',
        ) from None


def typed_column(values: list[Any], dtype: pa.DataType | str, name: str) -> pa.Array:
    """Per-row values as a column of ``dtype`` (``JSON_TYPE``: JSON text)."""
    if isinstance(dtype, str):
        return pa.array([None if v is None else dumps(_plain(v)) for v in values], pa.string())
    if pa.types.is_fixed_size_list(dtype):
        rows = [np.asarray(v) for v in values]
        if any(r.shape != (dtype.list_size,) for r in rows):
            raise ItemError(f"output '{name}' expects {dtype.list_size} values per row")
        matrix = np.stack(rows) if rows else np.empty((0, dtype.list_size))
        return to_array(matrix, name, len(values)).cast(dtype)
    try:
        return pa.array([_plain(v) for v in values]).cast(dtype) if values else pa.array([], dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ItemError(f"output '{name}' cannot be converted to {dtype}: {exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class HttpProtocol(ABC):
    """A request/response shape (``protocol = ...``)."""

    name: ClassVar[str]
    group_size: int = 1
    """Rows per request."""

    def __init__(self, settings: HttpSettings, outputs: list[str] | None) -> None:
        self.settings = settings
        self.configured_outputs = outputs

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """The URL requests are POSTed to."""

    def probe_url(self) -> str:
        """What setup GETs to see that the server is there."""
        s = self.settings
        if s.health_path:
            return with_path(_root(s.url), "/" + s.health_path.lstrip("/"))
        return _root(s.url) + "/"

    def setup(self, get: Any) -> None:  # noqa: B027 - optional hook
        """After the probe: read what the server says about the model (``get(url) -> (status, json)``)."""

    @property
    @abstractmethod
    def outputs(self) -> list[str]: ...

    @abstractmethod
    def check_columns(self, names: list[str]) -> None:
        """Raise ModelLoadError when the settings refer to columns that are not features."""

    @abstractmethod
    def atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        """One atom (or the row's error) per row. Runs on the reader thread."""

    @abstractmethod
    def body(self, atoms: list[Atom]) -> Any:
        """The JSON request body for up to ``group_size`` atoms."""

    @abstractmethod
    def parse(self, data: Any, text: str, count: int) -> list[Any]:
        """``count`` per-row values from a response; ItemError for a malformed answer."""

    def usage(self, data: Any) -> float | None:
        """Tokens the server reports for a response, if any."""
        return None

    @abstractmethod
    def columns(self, rows: list[Any]) -> dict[str, pa.Array]:
        """Per-row values as output columns (an empty list gives typed empty columns)."""


def _root(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


EXCERPT_CHARS = 200
"""Characters of an answer quoted in an error message."""


def response_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
