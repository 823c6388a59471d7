"""Connection URLs of SQL inputs and outputs: which database, how to connect, and how to show it.

``postgresql://user:secret@host:5432/db`` (or ``postgres://``) connects through psycopg 3;
``sqlite:///relative/path.db`` (relative to the job file's folder) and ``sqlite:////abs/path.db`` open
an SQLite file. The password is never shown: :attr:`SqlUrl.display` masks it, and ``password_env`` names
an environment variable that holds it instead of the URL.

Example::

    url = parse_url("postgresql://app:s3cret@db:5432/shop")
    url.dialect, url.display        # ("postgresql", "postgresql://app:***@db:5432/shop")
    psycopg.connect(**url.connect_kwargs)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import SpecError
from ..redact import mask_url

__all__ = ["SCHEMES", "SqlUrl", "is_sql_url", "parse_url"]

Dialect = Literal["postgresql", "sqlite"]

SCHEMES: dict[str, Dialect] = {"postgresql": "postgresql", "postgres": "postgresql", "sqlite": "sqlite"}
"""URL schemes -> dialect."""


@dataclass(frozen=True)
class SqlUrl:
    """A parsed connection URL."""

    dialect: Dialect
    """``"postgresql"`` or ``"sqlite"``."""
    display: str
    """The URL with its password masked (``***``): the only form of it fit for messages, logs and ledgers."""
    connect_kwargs: dict[str, Any] = field(repr=False, compare=False)
    """Keyword arguments of ``psycopg.connect`` (``conninfo``, maybe ``password``) or ``sqlite3.connect``
    (``database``): they hold the password, so never print them."""


def is_sql_url(url: str) -> bool:
    """True when ``url``'s scheme names a SQL database this package reads or writes."""
    head, sep, _ = url.partition("://")
    return bool(sep) and head.lower() in SCHEMES



def parse_url(url: str, password_env: str | None = None, *, base_dir: str | None = None) -> SqlUrl:
    """Parse ``url``. ``password_env``: the environment variable holding the password (PostgreSQL), read
    now; ``base_dir``: the folder a relative SQLite path is relative to (default: the working directory).

    Raises :class:`~infermill.errors.SpecError` for an unknown scheme, a missing variable, or a password
    both in the URL and in ``password_env``."""
    head, sep, rest = url.partition("://")
    dialect = SCHEMES.get(head.lower()) if sep else None
    display = mask_url(url)
    if dialect is None:
        raise SpecError(
            f"unsupported database URL {display!r}",
            hint='write "postgresql://user@host:5432/db" or "sqlite:///path/to/file.db"',
        )
    if dialect == "sqlite":
        if password_env:
            raise SpecError("'password_env' does not apply to SQLite", hint="remove password_env")
        if not rest.startswith("/") or rest == "/":
            raise SpecError(
                f"SQLite URL {display!r} names no file",
                hint='write "sqlite:///data.db" (relative to the job file) or "sqlite:////abs/path/data.db"',
            )
        path = rest[1:].split("?", 1)[0]
        if not os.path.isabs(path):
            path = os.path.join(base_dir or os.getcwd(), path)
        return SqlUrl("sqlite", display, {"database": os.path.normpath(path)})
    kwargs: dict[str, Any] = {"conninfo": url}
    if password_env:
        if display != url:
            raise SpecError(
                f"the URL {display!r} holds a password and 'password_env' names another",
                hint="remove the password from the URL (keep user@host) or remove password_env",
            )
        password = os.environ.get(password_env)
        if password is None:
            raise SpecError(
                f"the environment variable {password_env!r} (password_env) is not set",
                hint=f"`export {password_env}=...` before running, or fix password_env",
            )
        kwargs["password"] = password
    return SqlUrl("postgresql", display, kwargs)

