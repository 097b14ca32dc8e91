"""The time zone names a person or an operator may choose: IANA's canonical zones.

``zoneinfo.available_timezones()`` lists every file under the zone directory, including
names that are not places: ``localtime`` (whatever the server is set to), ``Factory``
(a zone whose abbreviation is "-00"), ``posixrules``, and the ``posix/``, ``right/`` and
backward-compatible aliases (``US/Eastern``, ``Asia/Calcutta``). Stored as a patient's
zone, they would make quiet hours follow the server, or nothing. Canonical names are
those IANA's ``zone.tab`` lists for a country (from the ``tzdata`` package, a
dependency, so every machine agrees), plus ``UTC``; only those loadable here count.
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


PROBLEM = "must be a canonical IANA time zone such as America/New_York (not an alias)"
