"""Shared pieces of the sms tests: Prism, Twilio settings, patients (fixtures: conftest.py)."""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.testclient import TestClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse

from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings, SmsBackend
from carebridge.utc import utcnow
from sms import contacts, preferences
from sms.preferences import PreferenceChanges

PEERS = Path(__file__).resolve().parents[1] / "peers"
SPEC = PEERS / "twilio" / "twilio_api_v2010.json"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
FROM_NUMBER = "+15005550006"
PUBLIC = "https://notify.example.org"

# Twilio error code -> (HTTP status, message), as Twilio's API answers them.
TWILIO_ERRORS = {
    21211: (400, "The 'To' number is not a valid phone number."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (400, "The 'To' phone number is not currently reachable via SMS."),
    21614: (400, "'To' number is not a valid mobile number"),
    20429: (429, "Too Many Requests"),
    30001: (400, "Queue overflow"),
    20500: (500, "Internal Server Error"),
    13224: (400, "Invalid phone number"),
}
_ERROR_OPERATIONS = (
    "/2010-04-01/Accounts/{AccountSid}/Messages.json",
    "/2010-04-01/Accounts/{AccountSid}/Calls.json",
)


def error_spec(target: Path) -> None:
    document = json.loads(SPEC.read_text(encoding="utf-8"))
    schema = {
        "type": "object",
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "more_info": {"type": "string"},
            "status": {"type": "integer"},
        },
    }
    for path in _ERROR_OPERATIONS:
        responses = document["paths"][path]["post"]["responses"]
        for code, (status, message) in TWILIO_ERRORS.items():
            entry = responses.setdefault(
                str(status),
                {
                    "description": "Twilio error",
                    "content": {"application/json": {"schema": schema, "examples": {}}},
                },
            )
            entry["content"]["application/json"]["examples"][f"e{code}"] = {
                "value": {
                    "code": code,
                    "message": message,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}",
                    "status": status,
                }
            }
    target.write_text(json.dumps(document), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Prism:
    url: str


class PreferClient(TwilioHttpClient):
    """The library's own HTTP client, adding Prism's ``Prefer`` header when asked to."""

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.prefer: str | None = None
        self.only: str | None = None  # apply ``prefer`` only to URLs ending with this
        self.requests: list[dict[str, Any]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        headers = dict(kwargs.get("headers") or {})
        if self.prefer and (self.only is None or url.endswith(self.only)):
            headers["Prefer"] = self.prefer
        kwargs["headers"] = headers
        self.requests.append({"method": method, "url": url, "data": kwargs.get("data")})
        return super().request(method, url, *args, **kwargs)


def twilio_settings(base: Settings, api_url: str, **overrides: Any) -> Settings:
    values = {
        "data_dir": base.data_dir,
        "database_url": base.database_url,
        "sms_backend": SmsBackend.TWILIO,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from_number": FROM_NUMBER,
        "twilio_api_base_url": api_url,
        "twilio_timeout_seconds": 2.0,
        "public_base_url": PUBLIC,
        "voice_callback_number": "+15005550100",
        "sms_rate_per_second": 1000.0,
        "voice_rate_per_second": 100.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Patient:
    account_id: str
    patient_id: str
    headers: dict[str, str]


@dataclass
class People:
    runtime: Runtime
    patients: dict[str, Patient]

    def __getitem__(self, name: str) -> Patient:
        return self.patients[name]


def verified_number(
    runtime: Runtime,
    patient_id: str,
    number: str = "+12025550143",
    **prefs: Any,
) -> str:
    """Give the patient a verified number and preferences; returns the contact point ID."""
    contact = contacts.set_number(
        runtime, patient_id=patient_id, actor="test", raw=number, request_id=None
    )
    with transaction(runtime.sessions) as db:
        row = contacts.of_patient(db, patient_id)
        assert row is not None
        row.verified_at = utcnow()
        # The code notification set_number queued is not what these tests are about.
        from sms.models import Notification  # noqa: PLC0415

        db.query(Notification).filter(Notification.patient_id == patient_id).delete()
    values: dict[str, Any] = {
        "sms_enabled": True,
        "time_zone": "UTC",
        "quiet_start": "00:00",
        "quiet_end": "00:00",
        "daily_cap": 1,
        "weekly_cap": 3,
    }
    values.update(prefs)
    preferences.update(
        runtime,
        patient_id=patient_id,
        actor="test",
        changes=PreferenceChanges(**values),
        request_id=None,
    )
    return contact.id


def client_for(runtime: Runtime) -> TestClient:
    from carebridge.app import create_app  # noqa: PLC0415

    return TestClient(create_app(runtime), raise_server_exceptions=False)


SMS_LINK = re.compile(r"https://notify\.example\.org/l/([A-Za-z0-9_-]{22})")


def sign(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    from twilio.request_validator import RequestValidator  # noqa: PLC0415

    return str(RequestValidator(token).compute_signature(url, params))


INBOUND = "/api/twilio/messages/inbound"


def message_sid() -> str:
    return "SM" + secrets.token_hex(16)


def as_twilio_sends(path: str, params: Mapping[str, str | None]) -> dict[str, str]:
    """What Twilio adds to every request (AccountSid), and to an inbound SMS (its own
    MessageSid); a test's own values (or None, to leave one out) win."""
    defaults = {"AccountSid": ACCOUNT_SID}
    if path == INBOUND:
        defaults["MessageSid"] = message_sid()
    merged: dict[str, str | None] = {**defaults, **params}
    return {name: value for name, value in merged.items() if value is not None}


def post_signed(
    client: TestClient,
    path: str,
    params: Mapping[str, str | None],
    *,
    signature: str | None = None,
    raw: bool = False,
) -> Any:
    """POST as Twilio would: form-encoded, signed over the public URL (not the test host).

    ``raw``: exactly these parameters, nothing added (a captured or crafted request).
    """
    if raw:
        form = {name: value for name, value in params.items() if value is not None}
    else:
        form = as_twilio_sends(path, params)
    headers = {"X-Twilio-Signature": sign(PUBLIC + path, form) if signature is None else signature}
    if signature == "":
        headers = {}
    return client.post(path, data=form, headers=headers)


def same_clock(zone: str, other: str) -> bool:
    """Whether two zones keep the same offset at every instant (weekly, 1970 to 2037)."""
    a, b = ZoneInfo(zone), ZoneInfo(other)
    at = datetime(1970, 1, 1, tzinfo=UTC)
    while at.year < 2038:
        if at.astimezone(a).utcoffset() != at.astimezone(b).utcoffset():
            return False
        at += timedelta(days=7)
    return True
