"""Contact points and preferences: pages (CSRF, no JavaScript) and the JSON API, audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import contacts, delivery, texts
from sms.backends import ConsoleSender
from sms.models import ContactPoint, Preferences
from tests.identity import factories
from tests.sms.helpers import People, client_for

NUMBER = "+12025550143"


@pytest.fixture
def web(runtime: Runtime) -> Iterator[TestClient]:
    with client_for(runtime) as client:
        yield client


def code_sent(runtime: Runtime, console: ConsoleSender, out: StringIO) -> str:
    delivery.drain(runtime, console)
    return out.getvalue().rsplit("code is ", 1)[1][:6]


def full_prefs(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sms_enabled": False,
        "voice_enabled": False,
        "voicemail_enabled": False,
        "time_zone": "America/Denver",
        "quiet_start": "22:00",
        "quiet_end": "07:30",
        "daily_cap": 1,
        "weekly_cap": 2,
        "insecure_consent": False,
    }
    body.update(changes)
    return body


# API


def test_defaults_are_everything_off(runtime: Runtime, web: TestClient, people: People) -> None:
    response = web.get("/api/v1/notifications/preferences", headers=people["zeb"].headers)
    assert response.status_code == 200
    assert response.json() == {
        "sms_enabled": False,
        "voice_enabled": False,
        "voicemail_enabled": False,
        "email_enabled": False,  # offered (a verified address), but off until chosen
        "email_available": False,  # zeb signs in without a password and address
        "time_zone": "America/New_York",
        "quiet_start": "21:00",
        "quiet_end": "08:00",
        "daily_cap": 1,
        "weekly_cap": 3,
        "insecure_consent": False,
        "insecure_consent_version": None,
        "insecure_consent_at": None,
        "notice_level": "generic",
        "consent_version": texts.CONSENT_VERSION,
        "consent_text": texts.CONSENT_TEXT,
        "consent_needs_renewal": False,
        "phone": None,
    }


def test_the_api_needs_a_signed_in_verified_patient(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    assert web.get("/api/v1/notifications/preferences").status_code == 401
    account = factories.account(runtime)
    factories.totp(runtime, account)
    token = factories.session(runtime, account, level=2)
    response = web.get(
        "/api/v1/notifications/preferences", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    # The API never acts on the session cookie (no CSRF check there).
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    assert web.get("/api/v1/notifications/preferences").status_code == 401


def test_sms_cannot_be_turned_on_without_a_verified_number(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    response = web.put(
        "/api/v1/notifications/preferences",
        json=full_prefs(sms_enabled=True),
        headers=people["zeb"].headers,
    )
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "sms_enabled"


def test_phone_verification_then_opt_in(
    runtime: Runtime,
    web: TestClient,
    people: People,
    console: ConsoleSender,
    console_out: StringIO,
) -> None:
    headers = people["zeb"].headers
    response = web.put(
        "/api/v1/notifications/phone", json={"number": "(202) 555-0143"}, headers=headers
    )
    assert response.status_code == 202
    assert response.json()["phone"] == {
        "last_digits": "0143",
        "verified": False,
        "sms_usable": True,
        "voice_usable": True,
        "opted_out": False,
        "code_pending": False,
    }
    code = code_sent(runtime, console, console_out)
    wrong = "000000" if code != "000000" else "111111"
    response = web.post("/api/v1/notifications/phone/verify", json={"code": wrong}, headers=headers)
    assert response.status_code == 400
    response = web.post("/api/v1/notifications/phone/verify", json={"code": code}, headers=headers)
    assert response.status_code == 200
    assert response.json()["phone"]["verified"] is True
    response = web.put(
        "/api/v1/notifications/preferences",
        json=full_prefs(
            sms_enabled=True,
            insecure_consent=True,
            insecure_consent_version=texts.CONSENT_VERSION,
        ),
        headers=headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["sms_enabled"] is True
    assert body["insecure_consent_version"] == texts.CONSENT_VERSION
    assert body["insecure_consent_at"] is not None
    with runtime.sessions() as db:
        prefs = db.get(Preferences, people["zeb"].patient_id)
        assert prefs is not None and prefs.sms_opted_in_at is not None
        records = db.scalars(select(AuditRecord).where(AuditRecord.action.like("sms.%"))).all()
        contact = db.scalars(select(ContactPoint)).one()
    actions = [r.action for r in records]
    assert actions[:1] == ["sms.contact.set"]
    assert "sms.contact.verify" in actions
    assert "sms.preferences.update" in actions
    for record in records:
        assert NUMBER not in f"{record.target}{record.actor}"
        assert code not in f"{record.target}{record.actor}"
    # At rest: encrypted number, keyed hash, no code.
    assert NUMBER.encode() not in contact.number_encrypted
    assert NUMBER not in contact.number_hash
    assert contact.code_hash is None


@pytest.mark.parametrize("number", ["123", "not a number", "+44 20 7946 0958", "+1 555"])
def test_malformed_or_foreign_numbers_are_refused(
    runtime: Runtime, web: TestClient, people: People, number: str
) -> None:
    response = web.put(
        "/api/v1/notifications/phone", json={"number": number}, headers=people["zeb"].headers
    )
    assert response.status_code == 400
    body = response.json()
    assert body["errors"][0]["field"] == "number"
    body.pop("request_id")  # random hex, which may contain "123" by chance
    assert number not in str(body)


def test_five_wrong_codes_void_the_code(
    runtime: Runtime,
    web: TestClient,
    people: People,
    console: ConsoleSender,
    console_out: StringIO,
) -> None:
    headers = people["zeb"].headers
    web.put("/api/v1/notifications/phone", json={"number": NUMBER}, headers=headers)
    code = code_sent(runtime, console, console_out)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(contacts.MAX_CODE_FAILURES):
        web.post("/api/v1/notifications/phone/verify", json={"code": wrong}, headers=headers)
    response = web.post("/api/v1/notifications/phone/verify", json={"code": code}, headers=headers)
    assert response.status_code == 400
    assert response.json()["code_status"] == "no_code"


def test_an_expired_code_is_refused(
    runtime: Runtime,
    web: TestClient,
    people: People,
    console: ConsoleSender,
    console_out: StringIO,
) -> None:
    headers = people["zeb"].headers
    web.put("/api/v1/notifications/phone", json={"number": NUMBER}, headers=headers)
    code = code_sent(runtime, console, console_out)
    with transaction(runtime.sessions) as db:
        contact = db.scalars(select(ContactPoint)).one()
        contact.code_expires_at = utcnow() - timedelta(seconds=1)
    response = web.post("/api/v1/notifications/phone/verify", json={"code": code}, headers=headers)
    assert response.json()["code_status"] == "expired"


def test_codes_per_day_are_limited(runtime: Runtime, web: TestClient, people: People) -> None:
    headers = people["zeb"].headers
    statuses = [
        web.put(
            "/api/v1/notifications/phone", json={"number": f"+1202555014{i}"}, headers=headers
        ).status_code
        for i in range(contacts.MAX_CODES_PER_DAY + 1)
    ]
    assert statuses == [202] * contacts.MAX_CODES_PER_DAY + [429]


def test_removing_and_re_adding_the_number_buys_no_more_codes(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    headers = people["zeb"].headers
    for _ in range(contacts.MAX_CODES_PER_DAY):
        assert (
            web.put(
                "/api/v1/notifications/phone", json={"number": NUMBER}, headers=headers
            ).status_code
            == 202
        )
        assert web.delete("/api/v1/notifications/phone", headers=headers).status_code == 204
    response = web.put("/api/v1/notifications/phone", json={"number": NUMBER}, headers=headers)
    assert response.status_code == 429
    with runtime.sessions() as db:
        row = db.scalars(select(ContactPoint)).one()
        assert row.number_hash == "" and row.number_encrypted == b""  # nothing of it kept


def test_caps_cannot_exceed_the_configured_limits(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    response = web.put(
        "/api/v1/notifications/preferences",
        json=full_prefs(daily_cap=2),
        headers=people["zeb"].headers,
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "bad", [{"time_zone": "Mars/Olympus"}, {"quiet_start": "25:00"}, {"weekly_cap": -1}]
)
def test_invalid_preferences_name_the_field(
    runtime: Runtime, web: TestClient, people: People, bad: dict[str, Any]
) -> None:
    response = web.put(
        "/api/v1/notifications/preferences", json=full_prefs(**bad), headers=people["zeb"].headers
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == next(iter(bad))


def test_removing_the_number_turns_channels_off(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    from tests.sms.helpers import verified_number  # noqa: PLC0415

    verified_number(runtime, people["zeb"].patient_id, voice_enabled=True)
    response = web.delete("/api/v1/notifications/phone", headers=people["zeb"].headers)
    assert response.status_code == 204
    body = web.get("/api/v1/notifications/preferences", headers=people["zeb"].headers).json()
    assert (body["sms_enabled"], body["voice_enabled"], body["phone"]) == (False, False, None)


def test_the_openapi_document_lists_the_endpoints(web: TestClient) -> None:
    import json  # noqa: PLC0415
    import re  # noqa: PLC0415

    document = web.get("/api/openapi.json").json()
    paths = document["paths"]
    assert {"get", "put"} <= set(paths["/api/v1/notifications/preferences"])
    assert "post" in paths["/api/v1/notifications/phone/verify"]
    assert {"put", "delete"} <= set(paths["/api/v1/notifications/phone"])
    ours = json.dumps({k: v for k, v in paths.items() if "/notifications/" in k})
    for name in re.findall(r"#/components/schemas/(\w+)", ours):
        assert name in document["components"]["schemas"], name
    # Twilio's webhooks are machine paths, not part of the patients' API.
    assert not any(path.startswith("/api/twilio") for path in paths)


# Pages


def page_form(web: TestClient) -> str:
    response = web.get("/account/notifications")
    assert response.status_code == 200
    return factories.csrf(response.text)


def test_the_page_needs_sign_in(runtime: Runtime, web: TestClient) -> None:
    response = web.get("/account/notifications", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin")


def test_the_page_flow_add_verify_and_opt_in(
    runtime: Runtime,
    web: TestClient,
    people: People,
    console: ConsoleSender,
    console_out: StringIO,
) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    page = web.get("/account/notifications")
    assert "<script" not in page.text
    assert 'for="sms_enabled"' in page.text
    token = factories.csrf(page.text)
    response = web.post(
        "/account/notifications/phone",
        data={"csrf_token": token, "phone": "202-555-0143"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/account/notifications?done=code-sent"
    code = code_sent(runtime, console, console_out)
    response = web.post(
        "/account/notifications/phone/verify",
        data={"csrf_token": page_form(web), "code": code},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/account/notifications?done=verified"
    form = {
        "csrf_token": page_form(web),
        "sms_enabled": "on",
        "voicemail_enabled": "on",
        "time_zone": "Europe/Berlin",
        "quiet_start": "20:00",
        "quiet_end": "09:00",
        "daily_cap": "1",
        "weekly_cap": "3",
    }
    response = web.post("/account/notifications/preferences", data=form, follow_redirects=False)
    assert response.headers["location"] == "/account/notifications?done=saved"
    with runtime.sessions() as db:
        prefs = db.get(Preferences, people["zeb"].patient_id)
        assert prefs is not None
        assert (prefs.sms_enabled, prefs.voice_enabled, prefs.voicemail_enabled) == (
            True,
            False,
            True,
        )
        assert (prefs.time_zone, prefs.quiet_start, prefs.quiet_end) == (
            "Europe/Berlin",
            "20:00",
            "09:00",
        )
    page = web.get("/account/notifications?done=saved")
    assert "Number ending in 0143" in page.text
    assert "2025550143" not in page.text


def test_page_forms_need_the_csrf_token(runtime: Runtime, web: TestClient, people: People) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    page_form(web)
    response = web.post("/account/notifications/phone", data={"phone": NUMBER})
    assert response.status_code == 403
    with runtime.sessions() as db:
        assert db.scalars(select(ContactPoint)).first() is None


def test_the_page_shows_errors_by_field(runtime: Runtime, web: TestClient, people: People) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    response = web.post(
        "/account/notifications/phone", data={"csrf_token": page_form(web), "phone": "12"}
    )
    assert response.status_code == 400
    assert 'id="phone-error"' in response.text
    assert 'aria-invalid="true"' in response.text
    response = web.post(
        "/account/notifications/preferences",
        data={
            "csrf_token": page_form(web),
            "sms_enabled": "on",
            "time_zone": "UTC",
            "quiet_start": "21:00",
            "quiet_end": "08:00",
            "daily_cap": "1",
            "weekly_cap": "3",
        },
    )
    assert response.status_code == 400
    assert "Add and verify a phone number first." in response.text


def test_every_field_on_the_page_has_a_label(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    from html.parser import HTMLParser  # noqa: PLC0415

    from tests.sms.helpers import verified_number  # noqa: PLC0415

    verified_number(runtime, people["zeb"].patient_id)
    with transaction(runtime.sessions) as db:
        contact = db.scalars(select(ContactPoint)).one()
        contact.verified_at = None  # the code form shows too
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    html = web.get("/account/notifications").text

    class Fields(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []
            self.labels: set[str] = set()
            self.forms = 0
            self.csrf = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if tag in ("input", "select", "textarea") and values.get("type") != "hidden":
                self.ids.append(values.get("id") or "")
            if tag == "label":
                self.labels.add(values.get("for") or "")
            if tag == "form":
                self.forms += 1
            if tag == "input" and values.get("name") == "csrf_token":
                self.csrf += 1

    fields = Fields()
    fields.feed(html)
    assert fields.ids and all(fields.ids)
    assert set(fields.ids) <= fields.labels
    assert fields.forms == fields.csrf  # every form carries its CSRF token
    assert "<script" not in html
