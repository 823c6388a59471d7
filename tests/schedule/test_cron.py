"""Cron expressions: fields, names, steps, the day-of-month/day-of-week rule, time zones and daylight saving."""

from __future__ import annotations

import pytest

from infermill.errors import SpecError
from infermill.schedule.cron import Cron, dt, zone
from infermill.spec import JobSpec, ScheduleSpec

UTC = zone("UTC")


def _due(expr: str, start: tuple[int, ...], end: tuple[int, ...], tz: str = "UTC") -> list[str]:
    return [t.isoformat() for t in Cron.parse(expr).due_between(dt(*start, tz=tz), dt(*end, tz=tz), zone(tz))]


def test_daily_at_two_is_due_once_a_day_after_exclusive_until_inclusive() -> None:
    assert _due("0 2 * * *", (2026, 3, 1, 2, 0), (2026, 3, 3, 2, 0)) == [
        "2026-03-02T02:00:00+00:00", "2026-03-03T02:00:00+00:00"]


def test_steps_ranges_lists_and_names() -> None:
    assert _due("*/20 9-10 * * mon-fri", (2026, 3, 6, 10, 30), (2026, 3, 9, 9, 30)) == [
        "2026-03-06T10:40:00+00:00", "2026-03-09T09:00:00+00:00", "2026-03-09T09:20:00+00:00"]
    assert _due("0 0 1 jan,jul *", (2026, 1, 1), (2027, 1, 1)) == [
        "2026-07-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"]
    assert Cron.parse("0 0 * * 7").weekdays == Cron.parse("0 0 * * sun").weekdays == frozenset({0})


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # 2026-03-13 is a Friday; the 1st of April 2026 a Wednesday.
    assert _due("0 0 1 * fri", (2026, 3, 12), (2026, 4, 2)) == [
        "2026-03-13T00:00:00+00:00", "2026-03-20T00:00:00+00:00", "2026-03-27T00:00:00+00:00",
        "2026-04-01T00:00:00+00:00"]


def test_macros_and_a_never_due_expression() -> None:
    assert Cron.parse("@daily").hours == frozenset({0})
    assert Cron.parse("0 0 30 2 *").next_after(dt(2026, 1, 1), UTC) is None


def test_wall_times_in_a_time_zone_across_daylight_saving() -> None:
    # Paris skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25.
    assert _due("30 2 * * *", (2026, 3, 27), (2026, 3, 31), "Europe/Paris") == [
        "2026-03-27T02:30:00+01:00", "2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00"]
    assert _due("30 2 * * *", (2026, 10, 24), (2026, 10, 27), "Europe/Paris") == [
        "2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


@pytest.mark.parametrize(("expr", "message"), [
    ("0 2 * *", "has 4 fields, not 5"),
    ("60 * * * *", "minute '60' is outside 0-59"),
    ("0 2 * * xyz", "day of week 'xyz' is not a number"),
    ("*/0 * * * *", "minute step '0' must be a positive number"),
    ("5-1 * * * *", "minute '5-1' is outside 0-59"),
])
def test_invalid_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        Cron.parse(expr)
    assert info.value.hint and "0 2 * * *" in info.value.hint


def test_schedule_section_is_checked_and_left_out_of_the_fingerprint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = {"input": {"path": "x.parquet"}, "model": {"kind": "python", "entrypoint": "m.py:M"},
            "output": {"path": "out"}}
    plain = JobSpec.from_dict(base, base_dir=tmp_path)
    scheduled = JobSpec.from_dict({**base, "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris",
                                                        "catchup": "all", "on_new_files": True}}, base_dir=tmp_path)
    assert scheduled.schedule == ScheduleSpec(cron="0 2 * * *", timezone="Europe/Paris", catchup="all",
                                              on_new_files=True)
    assert scheduled.fingerprint() == plain.fingerprint()
    with pytest.raises(SpecError, match="unknown time zone 'Mars/Base'"):
        JobSpec.from_dict({**base, "schedule": {"timezone": "Mars/Base"}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="'schedule.catchup' must be"):
        JobSpec.from_dict({**base, "schedule": {"catchup": "some"}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="unknown key 'schedule.cronn'"):
        JobSpec.from_dict({**base, "schedule": {"cronn": "0 2 * * *"}}, base_dir=tmp_path)
