"""SQL identifiers (tables, columns) from job files: validated, then quoted; values are never spliced
into SQL text but passed as parameters.

A name is one or two dotted parts (``schema.table``) of letters, digits, ``_`` and ``$``, not starting
with a digit: anything else, such as ``scores"; DROP TABLE x; --``, is refused with the name in the message.

Example::

    quote_ident("public.scores")    # '"public"."scores"'
"""

from __future__ import annotations

import re

from ..errors import SpecError

__all__ = [
    "quote_column", "quote_ident", "quote_name", "quote_qualified", "split_qualified", "validate_ident",
    "validate_name",
]

_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_MAX = 63  # PostgreSQL's limit (NAMEDATALEN - 1); longer names would be truncated silently


def validate_ident(name: str, what: str = "identifier") -> str:
    """``name`` when it is a plain (optionally ``schema.``-qualified) identifier; else SpecError naming it."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_PART.fullmatch(p) and len(p) <= _MAX for p in parts):
        raise SpecError(
            f"invalid SQL {what} {name!r}: use letters, digits, _ and $ (not first), at most {_MAX} "
            "characters, optionally schema-qualified (schema.table)",
            hint=(
                "rename it, or for a table with another name write [input] query = 'SELECT * FROM \"...\"'"
                if what.startswith("input.") else "use a plain name such as scores or analytics.scores"
            ),
        )
    return name


def quote_ident(name: str, what: str = "identifier") -> str:
    """``name`` validated (:func:`validate_ident`) and double-quoted, part by part."""
    return ".".join(f'"{part}"' for part in validate_ident(name, what).split("."))


def quote_column(name: str) -> str:
    """A column name read from the database itself (any characters), double-quoted with embedded quotes
    doubled: safe in SQL text whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def validate_name(name: str, what: str = "identifier") -> str:
    """``name`` when it is one plain identifier (a column, or one part of ``schema.table``: no dot)."""
    if not isinstance(name, str) or not _PART.fullmatch(name) or len(name) > _MAX:
        raise SpecError(
            f"invalid SQL {what} {name!r}: use letters, digits, _ and $ (not first), at most {_MAX} characters",
            hint="rename it (a column of the results can be renamed with [model] outputs)",
        )
    return name


def quote_name(name: str, what: str = "identifier") -> str:
    """One identifier (no dot: a column name may not be taken for ``schema.table``), validated, quoted."""
    return f'"{validate_name(name, what)}"'


def split_qualified(name: str, what: str = "table") -> tuple[str | None, str]:
    """``"analytics.scores"`` -> ``("analytics", "scores")``; ``"scores"`` -> ``(None, "scores")``; each
    part validated."""
    parts = validate_ident(name, what).split(".")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def quote_qualified(schema: str | None, name: str) -> str:
    """``("analytics", "scores")`` -> ``"analytics"."scores"``."""
    return f"{quote_name(schema)}.{quote_name(name)}" if schema else quote_name(name)
