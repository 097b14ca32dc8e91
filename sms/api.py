"""The notification settings as a JSON API, for the patient's own apps.

Authenticated like identity's account API: the session token as a bearer header (the API
never acts on the cookie), with a finished sign-in and a verified patient.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http import openapi
from carebridge.http.forms import read_json
from carebridge.http.problems import Problem
from carebridge.i18n import _
from carebridge.runtime import Runtime
from identity.interfaces import require_patient
from sms import consent, contacts, preferences, texts
from sms.phone import InvalidNumberError
from sms.preferences import PreferenceChanges, PreferenceError

openapi.component(PreferenceChanges)


@openapi.component
class PhoneState(BaseModel):
    last_digits: str = Field(description="The number's last four digits")
    verified: bool
    sms_usable: bool = Field(description="False once Twilio said it cannot take SMS")
    voice_usable: bool
    opted_out: bool = Field(description="The number replied STOP (or Twilio said 21610)")
    code_pending: bool = Field(description="A verification code was sent and is still valid")


@openapi.component
class NotificationSettings(BaseModel):
    sms_enabled: bool
    voice_enabled: bool
    voicemail_enabled: bool
    email_enabled: bool = Field(
        description="A generic notice by e-mail, to the account's verified address"
    )
    email_available: bool = Field(
        description="The account has a verified address: e-mail may be turned on"
    )
    time_zone: str
    quiet_start: str
    quiet_end: str
    daily_cap: int
    weekly_cap: int
    insecure_consent: bool = Field(
        description="The patient chose notices naming the care team (consent recorded)"
    )
    insecure_consent_version: str | None = Field(
        description="The consent text version the patient agreed to"
    )
    insecure_consent_at: datetime | None
    notice_level: Literal["generic", "team_name"] = Field(
        description="What notices say now: the team's name only under the text in force"
    )
    consent_version: str = Field(description="The consent text version in force")
    consent_text: str = Field(
        description="The consent text in force: show it, and send its version to agree"
    )
    consent_needs_renewal: bool = Field(
        description="Consent was given to an older text: notices are generic until renewed"
    )
    phone: PhoneState | None


@openapi.component
class PhoneNumber(BaseModel):
    number: str = Field(max_length=40, description="A mobile number; E.164 or national")


@openapi.component
class PhoneVerificationCode(BaseModel):
    code: str = Field(max_length=12)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _phone(contact: contacts.ContactView | None) -> PhoneState | None:
    if contact is None:
        return None
    return PhoneState(
        last_digits=contact.last_digits,
        verified=contact.verified,
        sms_usable=contact.sms_usable,
        voice_usable=contact.voice_usable,
        opted_out=contact.opted_out,
        code_pending=contact.code_pending,
    )


def _body(runtime: Runtime, patient_id: str) -> JSONResponse:
    snap = preferences.snapshot(runtime, patient_id)
    prefs = snap.prefs
    body = NotificationSettings(
        sms_enabled=prefs.sms_enabled,
        voice_enabled=prefs.voice_enabled,
        voicemail_enabled=prefs.voicemail_enabled,
        email_enabled=prefs.email_enabled,
        email_available=snap.email_available,
        time_zone=prefs.time_zone,
        quiet_start=prefs.quiet_start,
        quiet_end=prefs.quiet_end,
        daily_cap=prefs.daily_cap,
        weekly_cap=prefs.weekly_cap,
        insecure_consent=prefs.insecure_consent,
        insecure_consent_version=prefs.insecure_consent_version,
        insecure_consent_at=prefs.insecure_consent_at,
        notice_level=consent.in_force(prefs).value,
        consent_version=texts.CONSENT_VERSION,
        consent_text=_(texts.CONSENT_TEXT),
        consent_needs_renewal=consent.needs_asking(prefs),
        phone=_phone(snap.contact),
    )
    return JSONResponse(body.model_dump(mode="json"))


@openapi.operation(
    answers={200: openapi.Json(NotificationSettings, "The settings (defaults if never changed)")},
    security=openapi.session(),
    problems=(403,),
)
async def get_preferences(request: Request) -> Response:
    """Read notification preferences and the phone number's state

    - 401: Not signed in
    - 403: Not a verified patient
    """
    _, patient_id = await require_patient(request)
    return await run_in_threadpool(_body, _runtime(request), patient_id)


@openapi.operation(
    answers={200: openapi.Json(NotificationSettings, "The stored settings")},
    security=openapi.session(),
    body=PreferenceChanges,
    problems=(409,),
)
async def put_preferences(request: Request) -> Response:
    """Set notification preferences (audited)

    SMS and calls need a verified phone number. Turning SMS on is the explicit opt-in.
    Notices naming the care team (`insecure_consent`) need the patient's consent to the
    text in force: send `insecure_consent_version` equal to `consent_version` to give or
    renew it (recorded with the time, audited); `insecure_consent` false withdraws it at
    once. A consent to an older text is kept but not applied until renewed.

    - 400: A field is not valid
    - 401: Not signed in
    - 409: Not possible yet (no verified number, or consent to a text not in force)
    """
    account_id, patient_id = await require_patient(request)
    changes = await read_json(request, PreferenceChanges)
    runtime = _runtime(request)
    try:
        await run_in_threadpool(
            lambda: preferences.update(
                runtime,
                patient_id=patient_id,
                actor=f"account:{account_id}",
                changes=changes,
                request_id=_request_id(request),
            )
        )
    except PreferenceError as exc:
        status = 400 if exc.field in ("daily_cap", "weekly_cap") else 409
        raise Problem(
            status, exc.message, errors=[{"field": exc.field, "message": exc.message}]
        ) from None
    return await run_in_threadpool(_body, runtime, patient_id)


@openapi.operation(
    answers={202: openapi.Json(NotificationSettings, "The code is on its way")},
    security=openapi.session(),
    body=PhoneNumber,
    problems=(429,),
)
async def put_phone(request: Request) -> Response:
    """Set the phone number and text it a verification code

    The number is unverified until the code comes back (POST
    /api/v1/notifications/phone/verify); SMS and calls are off until then.

    - 400: Not a valid number of a region we serve
    - 429: Too many codes today
    """
    account_id, patient_id = await require_patient(request)
    body = await read_json(request, PhoneNumber)
    runtime = _runtime(request)
    try:
        await run_in_threadpool(
            lambda: contacts.set_number(
                runtime,
                patient_id=patient_id,
                actor=f"account:{account_id}",
                raw=body.number,
                request_id=_request_id(request),
            )
        )
    except InvalidNumberError as exc:
        raise Problem(400, str(exc), errors=[{"field": "number", "message": str(exc)}]) from None
    except contacts.TooManyCodesError:
        raise Problem(429, "Too many codes today. Try again tomorrow.") from None
    response = await run_in_threadpool(_body, runtime, patient_id)
    response.status_code = 202
    return response


@openapi.operation(
    answers={200: openapi.Json(NotificationSettings, "Verified")},
    security=openapi.session(),
    body=PhoneVerificationCode,
)
async def verify_phone(request: Request) -> Response:
    """Verify the phone number

    - 400: Wrong, expired or no code (five wrong tries void a code)
    """
    account_id, patient_id = await require_patient(request)
    body = await read_json(request, PhoneVerificationCode)
    runtime = _runtime(request)
    result = await run_in_threadpool(
        lambda: contacts.confirm_code(
            runtime,
            patient_id=patient_id,
            actor=f"account:{account_id}",
            code=body.code,
            request_id=_request_id(request),
        )
    )
    if result is not contacts.CodeResult.OK:
        raise Problem(400, "The code is not valid.", code_status=result.value)
    return await run_in_threadpool(_body, runtime, patient_id)


@openapi.operation(
    answers={204: openapi.Empty("Removed (or there was none)")},
    security=openapi.session(),
)
async def delete_phone(request: Request) -> Response:
    """Forget the phone number (SMS and calls turn off)"""
    account_id, patient_id = await require_patient(request)
    await run_in_threadpool(
        lambda: contacts.remove(
            _runtime(request),
            patient_id=patient_id,
            actor=f"account:{account_id}",
            request_id=_request_id(request),
        )
    )
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    base = "/api/v1/notifications"
    return [
        Route(f"{base}/preferences", get_preferences, methods=["GET"]),
        Route(f"{base}/preferences", put_preferences, methods=["PUT"]),
        Route(f"{base}/phone", put_phone, methods=["PUT"]),
        Route(f"{base}/phone", delete_phone, methods=["DELETE"]),
        Route(f"{base}/phone/verify", verify_phone, methods=["POST"]),
    ]
