"""Time zones are canonical IANA names only (issue 17): ``localtime`` would make a patient's
quiet hours follow the server's clock, ``Factory`` follow nothing."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge import time_zones
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from sms.models import Preferences
from tests.identity import factories
from tests.sms.helpers import People, client_for, same_clock
from tests.sms.test_preferences import full_prefs

NOT_PLACES = [
    "localtime",
    "Factory",
    "posixrules",
    "posix/America/New_York",
    "right/UTC",
    "US/Eastern",  # a backward-compatible alias of America/New_York
    "Asia/Calcutta",  # ... of Asia/Kolkata
    "EST5EDT",
    "Etc/GMT+5",
    "../zoneinfo/UTC",
]
PLACES = ["America/New_York", "Europe/Amsterdam", "Asia/Kolkata", "Pacific/Auckland", "UTC"]


@pytest.fixture
def web(runtime: Runtime) -> Iterator[TestClient]:
    with client_for(runtime) as client:
        yield client


def stored(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Preferences)) or 0)


@pytest.mark.parametrize("zone", NOT_PLACES)
def test_localtime_factory_and_aliases_are_refused_by_the_api(
    runtime: Runtime, web: TestClient, people: People, zone: str
) -> None:
    response = web.put(
        "/api/v1/notifications/preferences",
        json=full_prefs(time_zone=zone),
        headers=people["zeb"].headers,
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    [error] = response.json()["errors"]
    assert error["field"] == "time_zone"
    assert "America/New_York" in error["message"]
    assert stored(runtime) == 0


@pytest.mark.parametrize("zone", ["localtime", "Factory", "US/Eastern"])
def test_localtime_factory_and_aliases_are_refused_by_the_page(
    runtime: Runtime, web: TestClient, people: People, zone: str
) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    page = web.get("/account/notifications")
    assert f'value="{zone}"' not in page.text  # not offered...
    form = {
        "csrf_token": factories.csrf(page.text),
        "time_zone": zone,
        "quiet_start": "21:00",
        "quiet_end": "08:00",
        "daily_cap": "1",
        "weekly_cap": "3",
    }
    response = web.post("/account/notifications/preferences", data=form, follow_redirects=False)
    assert response.status_code == 400  # ...nor taken
    assert "Choose a time zone from the list." in response.text
    assert stored(runtime) == 0


@pytest.mark.parametrize("zone", PLACES)
def test_canonical_zones_are_accepted(
    runtime: Runtime, web: TestClient, people: People, zone: str
) -> None:
    response = web.put(
        "/api/v1/notifications/preferences",
        json=full_prefs(time_zone=zone),
        headers=people["zeb"].headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["time_zone"] == zone


@pytest.mark.parametrize("zone", ["localtime", "Factory"])
def test_the_default_zone_setting_refuses_localtime_and_factory(tmp_path: Path, zone: str) -> None:
    with pytest.raises(ValidationError, match="canonical IANA time zone"):
        Settings(data_dir=tmp_path, notify_time_zone=zone)
    assert Settings(data_dir=tmp_path, notify_time_zone="Europe/Berlin")


def test_every_zone_offered_loads_and_names_a_place() -> None:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    zones = time_zones.canonical()
    assert len(zones) > 300
    for zone in zones:
        ZoneInfo(zone)
        assert zone == "UTC" or "/" in zone
        assert not zone.startswith(("posix", "right", "Etc/", "US/", "SystemV/"))


# Zones stored before aliases were refused: they stay stored until the migration (0012)
# runs, or a replica of an older release writes one during a rolling deploy, or a tzdata
# release turns a zone into another's alias. Saving anything must not move quiet hours.

# A stored alias, and the canonical name of the same zone (a tzdata link; GMT: the same
# offset, 0, at every instant).
ALIASES = [
    ("US/Eastern", "America/New_York"),
    ("Asia/Calcutta", "Asia/Kolkata"),
    ("Etc/UTC", "UTC"),
    ("GMT", "UTC"),
    ("America/Buenos_Aires", "America/Argentina/Buenos_Aires"),
]


def store_zone(runtime: Runtime, patient_id: str, zone: str) -> None:
    """Preferences saved with ``zone``, as a release before issue 17 stored them."""
    from carebridge.db import transaction  # noqa: PLC0415
    from sms import preferences  # noqa: PLC0415

    with transaction(runtime.sessions) as db:
        prefs = preferences.defaults(runtime.settings, patient_id)
        prefs.quiet_start, prefs.quiet_end = "21:00", "08:00"
        prefs.daily_cap, prefs.weekly_cap = 1, 3
        prefs.time_zone = zone
        db.add(prefs)


def stored_zone(runtime: Runtime, patient_id: str) -> str:
    with runtime.sessions() as db:
        prefs = db.get(Preferences, patient_id)
        assert prefs is not None
        return prefs.time_zone


class _Form(HTMLParser):
    """What a browser submits for the preferences form: checked boxes, input values,
    and each select's selected option (the first one if none is)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.fields: dict[str, str] = {}
        self.select: str | None = None
        self.chosen: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        at = dict(attrs)
        if tag == "form":
            self.inside = at.get("action") == "/account/notifications/preferences"
        if not self.inside:
            return
        name = at.get("name")
        if tag == "input" and name:
            if at.get("type") not in ("checkbox", "radio"):
                self.fields[name] = at.get("value") or ""
            elif "checked" in at:  # as a browser sends them: the value, or "on"
                self.fields[name] = at.get("value") or "on"
        elif tag == "select" and name:
            self.select = name
        elif tag == "option" and self.select:
            self._option = (at.get("value"), "selected" in at)

    def handle_data(self, data: str) -> None:
        option = getattr(self, "_option", None)
        if option and self.select:
            value = option[0] if option[0] is not None else data
            if option[1] or self.select not in self.chosen:
                self.chosen.setdefault(self.select, value)
                if option[1]:
                    self.chosen[self.select] = value
            self._option = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.select = None
        elif tag == "form":
            self.inside = False


def as_a_browser_submits(html: str, **changes: str) -> dict[str, str]:
    form = _Form()
    form.feed(html)
    return {**form.fields, **form.chosen, **changes}


@pytest.mark.parametrize(("alias", "zone"), ALIASES, ids=[alias for alias, _ in ALIASES])
def test_a_stored_alias_stays_the_same_zone_when_the_patient_saves_another_setting(
    runtime: Runtime, web: TestClient, people: People, alias: str, zone: str
) -> None:
    patient = people["zeb"]
    store_zone(runtime, patient.patient_id, alias)
    factories.sign_in(web, runtime, patient.account_id, level=2)
    page = web.get("/account/notifications")

    form = as_a_browser_submits(page.text, weekly_cap="2")  # only the weekly cap changes
    response = web.post("/account/notifications/preferences", data=form, follow_redirects=False)

    assert response.status_code == 303, response.text
    assert stored_zone(runtime, patient.patient_id) == zone
    assert same_clock(zone, alias)  # so quiet hours mean what they meant


@pytest.mark.parametrize(("alias", "zone"), ALIASES, ids=[alias for alias, _ in ALIASES])
def test_a_stored_alias_round_trips_through_the_api(
    runtime: Runtime, web: TestClient, people: People, alias: str, zone: str
) -> None:
    patient = people["zeb"]
    store_zone(runtime, patient.patient_id, alias)
    path = "/api/v1/notifications/preferences"
    settings = web.get(path, headers=patient.headers).json()
    assert settings["time_zone"] == zone

    body = {name: settings[name] for name in full_prefs()} | {"weekly_cap": 2}
    response = web.put(path, json=body, headers=patient.headers)

    assert response.status_code == 200, response.text
    assert stored_zone(runtime, patient.patient_id) == zone


@pytest.mark.parametrize("nowhere", ["localtime", "Factory", "Etc/GMT+5", "Mars/Olympus_Mons"])
def test_a_stored_zone_that_names_no_place_is_never_replaced_unasked(
    runtime: Runtime, web: TestClient, people: People, nowhere: str
) -> None:
    # No canonical zone keeps its clock: the page asks for one rather than pick one.
    patient = people["zeb"]
    store_zone(runtime, patient.patient_id, nowhere)
    factories.sign_in(web, runtime, patient.account_id, level=2)
    page = web.get("/account/notifications")
    assert "Choose your time zone" in page.text

    form = as_a_browser_submits(page.text, weekly_cap="2")
    response = web.post("/account/notifications/preferences", data=form, follow_redirects=False)

    assert response.status_code == 400
    assert "Choose a time zone from the list." in response.text
    assert stored_zone(runtime, patient.patient_id) == nowhere


def test_canonical_names_resolve_links_with_tzdata() -> None:
    for alias, zone in ALIASES:
        assert time_zones.canonical_name(alias) == zone
    for zone in time_zones.canonical():
        assert time_zones.canonical_name(zone) == zone
    assert time_zones.canonical_name("posix/US/Eastern") == "America/New_York"
    assert time_zones.canonical_name("posix/Europe/Berlin") == "Europe/Berlin"
    nowhere = ["localtime", "Factory", "posixrules", "Etc/GMT+5", "right/UTC", "", "../UTC"]
    for name in nowhere:
        assert time_zones.canonical_name(name) is None, name
