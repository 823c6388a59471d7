"""A five-field cron expression and the times it is due, in a time zone (pure Python, no dependency).

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of week (0-7 or
sun-sat; 0 and 7 are Sunday). Each field takes ``*``, a number or name, a range ``a-b``, a step ``*/n`` or
``a-b/n``, and comma lists of these. As in Vixie cron, when both day of month and day of week are
restricted a day matches either. The macros ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``,
``@monthly`` and ``@yearly`` (``@annually``) are accepted.

Times are the wall clock of the schedule's time zone. Daylight saving: a wall time that does not exist
(the hour skipped in spring) is not due that day; a wall time that happens twice (the hour repeated in
autumn) is due once, the first time.

>>> cron = Cron.parse("0 2 * * *")
>>> [t.isoformat() for t in cron.due_between(dt(2026, 3, 1, 0, 0), dt(2026, 3, 3, 0, 0), ZoneInfo("UTC"))]
['2026-03-01T02:00:00+00:00', '2026-03-02T02:00:00+00:00']
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import SpecError

__all__ = ["Cron", "dt", "zone"]

_MONTHS = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MACROS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_HINT = 'five fields: minute hour day-of-month month day-of-week, e.g. cron = "0 2 * * *" (02:00 every day)'
_MAX_YEARS = 5
"""How far ahead a search for the next due time looks (``0 0 30 2 *`` is never due)."""


def dt(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: str = "UTC") -> _dt.datetime:
    """An aware datetime (for examples and tests)."""
    return _dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz))


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``"Europe/Paris"``), or a SpecError saying how to name one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SpecError(
            f"unknown time zone {name!r} in [schedule] timezone",
            hint='use an IANA name such as "UTC", "Europe/Paris" or "America/New_York" '
            "(on a system without time zone data: pip install tzdata)",
        ) from exc


def _value(text: str, names: dict[str, int], what: str, expr: str) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise SpecError(f"cron {expr!r}: {what} {text!r} is not a number", hint=_HINT)
    return int(text)


def _field(text: str, what: str, low: int, high: int, names: dict[str, int], expr: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise SpecError(f"cron {expr!r}: {what} step {step_text!r} must be a positive number", hint=_HINT)
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, names, what, expr), _value(b, names, what, expr)
        else:
            start = _value(base, names, what, expr)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise SpecError(f"cron {expr!r}: {what} {base!r} is outside {low}-{high}", hint=_HINT)
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the set of each field's values."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday ... 6 = Saturday (a 7 is folded into 0)."""
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """Parse ``expression``; a SpecError names what is wrong."""
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise SpecError(f"cron {expression!r} has {len(parts)} fields, not 5", hint=_HINT)
        sets = [
            _field(p, what, low, high, names, expression)
            for p, (what, low, high, names) in zip(parts, _FIELDS, strict=True)
        ]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays,
                   any_day=parts[2] == "*", any_weekday=parts[4] == "*")

    def _day_matches(self, day: _dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week  # both restricted: either (Vixie cron)

    def _wall_times(self, start: _dt.date) -> Iterator[_dt.datetime]:
        """Every matching wall time (naive) from the start of ``start``, in order."""
        day = start
        last = start + _dt.timedelta(days=366 * _MAX_YEARS)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        while day <= last:
            if self._day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        yield _dt.datetime(day.year, day.month, day.day, hour, minute)
            day += _dt.timedelta(days=1)

    def due_between(
        self, after: _dt.datetime, until: _dt.datetime, tz: _dt.tzinfo, *, limit: int | None = None
    ) -> list[_dt.datetime]:
        """The due times ``t`` with ``after < t <= until`` (aware, in ``tz``), oldest first; at most ``limit``,
        the newest ones, when given."""
        found: list[_dt.datetime] = []
        if until <= after:
            return found
        for wall in self._wall_times(after.astimezone(tz).date() - _dt.timedelta(days=1)):
            moment = _existing(wall, tz)
            if moment is None or moment <= after:
                continue
            if moment > until:
                break
            found.append(moment)
            if limit is not None and len(found) > limit:
                del found[0]
        return found

    def next_after(self, after: _dt.datetime, tz: _dt.tzinfo) -> _dt.datetime | None:
        """The first due time after ``after``, or None when it is never due (``0 0 30 2 *``)."""
        for wall in self._wall_times(after.astimezone(tz).date() - _dt.timedelta(days=1)):
            moment = _existing(wall, tz)
            if moment is not None and moment > after:
                return moment
        return None


def _existing(wall: _dt.datetime, tz: _dt.tzinfo) -> _dt.datetime | None:
    """``wall`` in ``tz`` (the first of two when it is repeated), or None when the clock skips it."""
    moment = wall.replace(tzinfo=tz, fold=0)
    back = moment.astimezone(_dt.UTC).astimezone(tz)
    if back.replace(tzinfo=None) != wall:
        return None  # in the gap of a spring-forward change
    return moment
