"""Time zones are canonical IANA names only (issue 17): ``localtime`` would make a patient's
quiet hours follow the server's clock, ``Factory`` follow nothing."""

from __future__ import annotations

from collections.abc import Iterator
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
from tests.sms.helpers import People, client_for
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
