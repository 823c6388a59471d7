"""Path templates: ``[input] path = "data/{date}/*.parquet"`` with ``--param date=2026-12-01``.

A daily partition is the same job over a new folder each day. The placeholders of ``[input] path`` are
filled from the job's params (``infermill run job.toml --param date=2026-12-01``); ``date`` defaults to
today in the job's timezone (``[runtime] timezone``, default UTC). Every other placeholder must be given:
a path is never read with a placeholder left in it, and a param that names no placeholder is refused (a
typo would otherwise read today's partition).

Files are named relative to the folder before the first placeholder (``data/``), so the same file name
in two partitions (``2026-12-01/part-0.parquet``, ``2026-12-02/part-0.parquet``) is two files to an
incremental run, not one file that changed.
"""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Mapping

from .errors import SpecError

__all__ = ["DEFAULT_TIMEZONE", "placeholders", "render", "template_base", "today"]

DEFAULT_TIMEZONE = "UTC"


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template`` in order (``"data/{date}/*.parquet"`` -> ``["date"]``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(
            f"[input] path {template!r} is not a valid path template: {exc}",
            hint="placeholders are written {name}; write a literal brace as {{ or }}",
        ) from None
    names = []
    for _text, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise SpecError(
                f"[input] path {template!r}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain name",
                hint="write placeholders as {name}, e.g. {date}, and pass `--param date=2026-12-01`",
            )
        names.append(name)
    return names


def today(timezone: str | None) -> str:
    """Today's date (``YYYY-MM-DD``) in ``timezone`` (an IANA name such as ``Europe/Paris``)."""
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(timezone or DEFAULT_TIMEZONE)).date().isoformat()


def render(template: str, params: Mapping[str, str], timezone: str | None, where: str) -> str:
    """``template`` with its placeholders filled; refuses a placeholder without a value and a param that
    names no placeholder."""
    names = placeholders(template)
    values = dict(params)
    if "date" in names and "date" not in values:
        values["date"] = today(timezone)
    missing = [n for n in names if n not in values]
    if missing:
        raise SpecError(
            f"{where}: [input] path {template!r} has the placeholder {{{missing[0]}}}, which has no value",
            hint=f"pass it on the command line: `infermill run JOB --param {missing[0]}=VALUE` (only {{date}} "
            "has a default: today)",
        )
    unused = sorted(set(params) - set(names))
    if unused:
        known = ", ".join(f"{{{n}}}" for n in dict.fromkeys(names)) or "none"
        raise SpecError(
            f"{where}: --param {unused[0]} names no placeholder of [input] path {template!r} (placeholders: "
            f"{known})",
            hint=f"check the name, or put {{{unused[0]}}} into [input] path",
        )
    return template.format_map(values)


def template_base(template: str) -> str | None:
    """The folder before the first placeholder (``"data/{date}/*.parquet"`` -> ``"data"``): files are
    named relative to it. None when the template has no placeholder or the placeholder is in the first
    component."""
    cut = template.find("{")
    while cut >= 0 and template.startswith("{{", cut):
        cut = template.find("{", cut + 2)
    if cut < 0:
        return None
    head = template[:cut]
    if "/" not in head:
        return None
    return head.rsplit("/", 1)[0] or "/"
