"""Quiet hours: a daily window in the patient's own time zone when nobody is contacted.

The window may cross midnight (21:00-08:00, the default). Its end is found as a wall-clock
time in the patient's zone, so a change to or from daylight saving time moves it with
the patient's clock. An end inside a spring-forward gap is read on the clock before the
change (02:30 that night is 03:30 daylight time); an end a fall-back repeats happens at
its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _is_quiet(local: time, start: time, end: time) -> bool:
    if start == end:
        return False  # an empty window: never quiet
    if start < end:
        return start <= local < end
    return local >= start or local < end


def _at(day: date, wall: time, zone: ZoneInfo) -> datetime:
    # Through UTC and back: a wall time inside a DST gap lands on the real instant after it.
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def quiet_until(now: datetime, zone_name: str, start: time, end: time) -> datetime | None:
    """The UTC instant quiet hours end, if ``now`` is inside them; None otherwise."""
    zone = ZoneInfo(zone_name)
    local = now.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    if not _is_quiet(wall, start, end):
        return None
    day = local.date()
    if wall >= end:  # the evening part of a window crossing midnight: it ends tomorrow
        day += timedelta(days=1)
    return _at(day, end, zone)
