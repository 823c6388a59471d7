"""The ``[output]`` keys of ``format = "sql"`` (a PostgreSQL or SQLite table). Light: imports no driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import SpecError
from ..redact import mask_url
from ..sql._ident import split_qualified, validate_name

__all__ = ["SqlSinkSettings"]


@dataclass(frozen=True)
class SqlSinkSettings:
    """The ``[output]`` keys of ``format = "sql"``."""

    url: str = ""
    """The database: ``postgresql://user@host:5432/db`` (psycopg 3) or ``sqlite:///results.db`` (relative to
    the job file). A password in the URL is never shown; prefer ``password_env``."""
    table: str = ""
    """The target table, optionally schema-qualified (``analytics.scores``); created from the output schema
    when missing."""
    mode: Literal["insert", "upsert", "replace"] = "insert"
    """``insert``: add the job's rows; ``upsert``: insert or update by ``key`` (the table needs a unique key
    on it); ``replace``: build a new table and swap it in when the job completes, all or nothing."""
    key: str | None = None
    """The column that identifies a row (default: the input's id column, or ``_row_id``)."""
    errors_table: str | None = None
    """Where dead letters go (default ``<table>_errors``), in the same database."""
    password_env: str | None = None
    """An environment variable holding the database password (instead of writing it in the URL)."""

    def __post_init__(self) -> None:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise SpecError(
                f"'output.url' must be a postgresql:// or sqlite:/// URL, not {mask_url(self.url)!r}",
                hint='e.g. url = "postgresql://user@host:5432/db" or url = "sqlite:///results.db"',
            )
        if not self.table:
            raise SpecError("'output.table' is empty", hint='set [output] table = "scores" (format "sql" needs it)')
        split_qualified(self.table, "output.table")
        if self.errors_table is not None:
            split_qualified(self.errors_table, "output.errors_table")
        if self.key is not None:
            validate_name(self.key, "output.key")
        if self.password_env is not None and not self.password_env:
            raise SpecError("'output.password_env' is empty", hint='name a variable: password_env = "PGPASSWORD"')
