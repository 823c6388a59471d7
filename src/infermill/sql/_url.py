"""Connection URLs of the SQL source and sink: ``postgresql://user[:password]@host[:port]/db?...`` or
``sqlite:///relative/path.db`` / ``sqlite:////absolute/path.db``. ``display`` never holds a password;
``password_env`` names an environment variable holding it instead of the URL."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import SpecError

__all__ = ["SqlUrl", "mask", "parse_url"]

Dialect = Literal["postgresql", "sqlite"]


@dataclass(frozen=True)
class SqlUrl:
    """A parsed connection URL."""

    dialect: Dialect
    display: str
    """The URL fit for a message, the ledger or status: no password."""
    connect_kwargs: dict[str, Any] = field(repr=False)
    """psycopg.connect(**kwargs) (PostgreSQL) or ``{"database": path}`` (SQLite; a relative path is relative
    to the job file's folder, resolved by the caller)."""


def mask(text: str) -> str:
    """Remove ``user:password@`` passwords and ``password=`` values from any text (an error message)."""
    shown = re.sub(r"([a-zA-Z][\w+.-]*://[^/@:\s]*):[^/@\s]*@", r"\1@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", shown)


def parse_url(url: str, password_env: str | None = None) -> SqlUrl:
    """Parse ``url``; with ``password_env``, the password comes from that environment variable.

    >>> parse_url("postgresql://bob:s3cret@db:5432/prod").display
    'postgresql://bob@db:5432/prod'
    """
    if not isinstance(url, str) or "://" not in url:
        raise SpecError(f"{mask(str(url))!r} is not a database URL", hint=_HINT)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.lower().startswith("sqlite:///") else ""
        if not path:
            raise SpecError(f"{url!r} names no database file", hint=_HINT)
        return SqlUrl("sqlite", url, {"database": path})
    if scheme not in ("postgresql", "postgres"):
        raise SpecError(f"{mask(url)!r}: unsupported database {scheme!r}", hint=_HINT)
    parts = urlsplit(url)
    kwargs: dict[str, Any] = {}
    if parts.hostname:
        kwargs["host"] = parts.hostname
    if parts.port:
        kwargs["port"] = parts.port
    if parts.username:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    dbname = unquote(parts.path.lstrip("/"))
    if dbname:
        kwargs["dbname"] = dbname
    kwargs.update(dict(parse_qsl(parts.query)))
    if password_env:
        if password_env not in os.environ:
            raise SpecError(
                f"password_env names the environment variable {password_env!r}, which is not set",
                hint=f"export {password_env}=... before running the job",
            )
        kwargs["password"] = os.environ[password_env]
    return SqlUrl("postgresql", mask(url), kwargs)


_HINT = 'e.g. url = "postgresql://user@host:5432/db" (with password_env = "PGPASSWORD") or url = "sqlite:///out.db"'
