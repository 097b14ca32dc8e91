"""The time zone names a person or an operator may choose: IANA's canonical zones.

``zoneinfo.available_timezones()`` lists every file under the zone directory, including
names that are not places: ``localtime`` (whatever the server is set to), ``Factory``
(a zone whose abbreviation is "-00"), ``posixrules``, and the ``posix/``, ``right/`` and
backward-compatible aliases (``US/Eastern``, ``Asia/Calcutta``). Stored as a patient's
zone, they would make quiet hours follow the server, or nothing. Canonical names are
those IANA's ``zone.tab`` lists for a country (from the ``tzdata`` package, a
dependency, so every machine agrees), plus ``UTC``; only those loadable here count.
A name stored before (an alias, or a zone a later tzdata release made another's alias)
reads as its canonical name, by tzdata's own links: :func:`canonical_name`.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from zoneinfo import available_timezones


@functools.cache
def canonical() -> frozenset[str]:
    table = files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
    # Lines: country code, coordinates, zone name[, comment]; "#" starts a comment line.
    named = {line.split("\t")[2] for line in table.splitlines() if line and line[0] != "#"}
    return frozenset((named | {"UTC"}) & available_timezones())


def is_canonical(name: str) -> bool:
    return name in canonical()


@functools.cache
def _links() -> dict[str, str]:
    """tzdata's links, alias to zone (``US/Eastern`` → ``America/New_York``): another name
    for the same zone. From the ``tzdata.zi`` the ``tzdata`` package ships (zic's input),
    whose lines ``L TARGET NAME`` say so; none targets another link."""
    table = files("tzdata").joinpath("zoneinfo", "tzdata.zi").read_text(encoding="utf-8")
    return {
        fields[2]: fields[1]
        for fields in (line.split() for line in table.splitlines())
        if len(fields) == 3 and fields[0] == "L"
    }


# Zones with no canonical name of their own that keep UTC's clock: UTC itself is a link to
# Etc/UTC, and Etc/GMT has the same offset, 0, at every instant (only its abbreviation
# differs), which is all quiet hours read.
_UTC = frozenset({"Etc/UTC", "Etc/GMT"})


def canonical_name(name: str) -> str | None:
    """The canonical name of the zone ``name`` names (itself if canonical), or None for
    a name of no place (``localtime``, ``Factory``, a fixed offset such as ``Etc/GMT+5``,
    anything unknown): no canonical zone keeps that clock."""
    if is_canonical(name):
        return name
    # posix/ holds the same zones again (built without leap seconds, like the main tree).
    name = name.removeprefix("posix/")
    zone = _links().get(name, name)
    if zone in _UTC:
        return "UTC"
    return zone if is_canonical(zone) else None


PROBLEM = "must be a canonical IANA time zone such as America/New_York (not an alias)"
