"""SQL identifiers: validated against a plain pattern, then always quoted. Values never go into SQL text
(they are parameters); identifiers cannot be parameters, so a name that is not a plain identifier is
refused before any statement is built, naming it."""

from __future__ import annotations

import re

from ..errors import SpecError

__all__ = ["quote_ident", "quote_qualified", "split_qualified", "validate_ident"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_ident(name: str, what: str = "identifier") -> str:
    """``name`` when it is a plain SQL identifier (letters, digits, ``_``; at most 63 characters, the
    PostgreSQL limit); SpecError naming it otherwise."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SpecError(
            f"{what} {name!r} is not a plain SQL identifier",
            hint="use letters, digits and underscores only (at most 63, not starting with a digit), "
            'optionally schema-qualified: table = "analytics.scores"',
        )
    return name


def split_qualified(name: str, what: str = "table") -> tuple[str | None, str]:
    """``"analytics.scores"`` -> ``("analytics", "scores")``; ``"scores"`` -> ``(None, "scores")``; each
    part validated."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if len(parts) > 2:
        raise SpecError(f"{what} {name!r} has more than one '.'", hint='write it as "schema.table" or "table"')
    for part in parts:
        validate_ident(part, what)
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def quote_ident(name: str) -> str:
    """``scores`` -> ``"scores"`` (validated first; quoting keeps the name's case)."""
    validate_ident(name)
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(schema: str | None, name: str) -> str:
    """``("analytics", "scores")`` -> ``"analytics"."scores"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)
