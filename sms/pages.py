"""The patient's notification pages at /account/notifications (forms, CSRF, no JavaScript)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http.forms import read_form
from carebridge.http.templates import templates_for
from carebridge.i18n import N_, _
from carebridge.runtime import Runtime
from identity.interfaces import TEMPLATES as IDENTITY_TEMPLATES
from identity.interfaces import require_patient
from sms import consent, contacts, preferences, texts
from sms.phone import InvalidNumberError
from sms.preferences import PreferenceChanges, PreferenceError

# identity's templates too: its form macros and the account navigation.
templates = templates_for(
    Path(__file__).resolve().parent / "templates",
    IDENTITY_TEMPLATES,
)
PAGE = "/account/notifications"

_NOTICES = {
    "code-sent": N_("We sent a code to your phone. Enter it below."),
    "verified": N_("Your phone number is verified."),
    "saved": N_("Your notification settings are saved."),
    "removed": N_("Your phone number is removed. Texts and calls are off."),
}


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    return templates.TemplateResponse(request, f"sms/{name}", context, status_code=status_code)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _text(form: FormData, name: str, limit: int = 64) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


async def _page(
    request: Request,
    patient_id: str,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    values: dict[str, Any] | None = None,
) -> Response:
    snap = await run_in_threadpool(preferences.snapshot, _runtime(request), patient_id)
    settings = _runtime(request).settings
    context = {
        "prefs": values or snap.prefs,
        "contact": snap.contact,
        "email_available": snap.email_available,
        "errors": errors or {},
        "notice": _NOTICES.get(request.query_params.get("done", "")),
        "zones": sorted(preferences.time_zones()),
        "consent_text": _(texts.CONSENT_TEXT),
        "consent_version": texts.CONSENT_VERSION,
        # What is stored, whatever the form sent back: the level in force, or a consent
        # to an older text that the page asks again for.
        "consent_in_force": consent.in_force(snap.prefs) is consent.Level.TEAM_NAME,
        "consent_stale": consent.needs_asking(snap.prefs),
        "max_daily": settings.notify_daily_cap,
        "max_weekly": settings.notify_weekly_cap,
    }
    return render(request, "notifications.html", context, status_code=status_code)


def _done(what: str) -> Response:
    return RedirectResponse(f"{PAGE}?done={what}", status_code=303)


async def page(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    return await _page(request, patient_id)


async def set_phone(request: Request) -> Response:
    account_id, patient_id = await require_patient(request)
    form = await read_form(request)
    try:
        await run_in_threadpool(
            lambda: contacts.set_number(
                _runtime(request),
                patient_id=patient_id,
                actor=f"account:{account_id}",
                raw=_text(form, "phone", 40),
                request_id=_request_id(request),
            )
        )
    except InvalidNumberError as exc:
        return await _page(request, patient_id, errors={"phone": str(exc)}, status_code=400)
    except contacts.TooManyCodesError:
        errors = {"phone": N_("Too many codes today. Try again tomorrow.")}
        return await _page(request, patient_id, errors=errors, status_code=429)
    return _done("code-sent")


async def resend_code(request: Request) -> Response:
    account_id, patient_id = await require_patient(request)
    await read_form(request)
    try:
        await run_in_threadpool(
            lambda: contacts.resend_code(
                _runtime(request),
                patient_id=patient_id,
                actor=f"account:{account_id}",
                request_id=_request_id(request),
            )
        )
    except contacts.TooManyCodesError:
        errors = {"code": N_("Too many codes today. Try again tomorrow.")}
        return await _page(request, patient_id, errors=errors, status_code=429)
    return _done("code-sent")


_CODE_ERRORS = {
    contacts.CodeResult.WRONG: N_("That code is not right. Check it and try again."),
    contacts.CodeResult.EXPIRED: N_("That code has expired. Ask for a new one."),
    contacts.CodeResult.NO_CODE: N_("There is no code to check yet. Ask for a new one."),
}


async def verify_phone(request: Request) -> Response:
    account_id, patient_id = await require_patient(request)
    form = await read_form(request)
    result = await run_in_threadpool(
        lambda: contacts.confirm_code(
            _runtime(request),
            patient_id=patient_id,
            actor=f"account:{account_id}",
            code=_text(form, "code", 12),
            request_id=_request_id(request),
        )
    )
    if result is not contacts.CodeResult.OK:
        errors = {"code": _CODE_ERRORS[result]}
        return await _page(request, patient_id, errors=errors, status_code=400)
    return _done("verified")


async def remove_phone(request: Request) -> Response:
    account_id, patient_id = await require_patient(request)
    await read_form(request)
    await run_in_threadpool(
        lambda: contacts.remove(
            _runtime(request),
            patient_id=patient_id,
            actor=f"account:{account_id}",
            request_id=_request_id(request),
        )
    )
    return _done("removed")


def changes_from_form(form: FormData) -> dict[str, Any]:
    return {
        "sms_enabled": form.get("sms_enabled") == "on",
        "voice_enabled": form.get("voice_enabled") == "on",
        "voicemail_enabled": form.get("voicemail_enabled") == "on",
        "email_enabled": form.get("email_enabled") == "on",
        "insecure_consent": form.get("notice_level") == "team_name",
        "insecure_consent_version": _text(form, "insecure_consent_version", 32) or None,
        "time_zone": _text(form, "time_zone"),
        "quiet_start": _text(form, "quiet_start", 5),
        "quiet_end": _text(form, "quiet_end", 5),
        "daily_cap": _text(form, "daily_cap", 3) or "x",
        "weekly_cap": _text(form, "weekly_cap", 3) or "x",
    }


_FIELD_MESSAGES = {
    "time_zone": N_("Choose a time zone from the list."),
    "quiet_start": N_("Enter a time like 21:00."),
    "quiet_end": N_("Enter a time like 08:00."),
    "daily_cap": N_("Enter a number."),
    "weekly_cap": N_("Enter a number."),
}


async def save_preferences(request: Request) -> Response:
    account_id, patient_id = await require_patient(request)
    form = await read_form(request)
    raw = changes_from_form(form)
    try:
        changes = PreferenceChanges.model_validate(raw)
        await run_in_threadpool(
            lambda: preferences.update(
                _runtime(request),
                patient_id=patient_id,
                actor=f"account:{account_id}",
                changes=changes,
                request_id=_request_id(request),
            )
        )
    except ValidationError as exc:
        errors = {
            str(error["loc"][0]): _FIELD_MESSAGES.get(str(error["loc"][0]), N_("Check this value."))
            for error in exc.errors(include_url=False, include_input=False)
        }
        return await _page(request, patient_id, errors=errors, status_code=400, values=raw)
    except PreferenceError as exc:
        errors = {exc.field: exc.message}
        return await _page(request, patient_id, errors=errors, status_code=400, values=raw)
    return _done("saved")


def routes() -> list[BaseRoute]:
    return [
        Route(PAGE, page, methods=["GET"], name="sms_notifications"),
        Route(f"{PAGE}/preferences", save_preferences, methods=["POST"]),
        Route(f"{PAGE}/phone", set_phone, methods=["POST"]),
        Route(f"{PAGE}/phone/verify", verify_phone, methods=["POST"]),
        Route(f"{PAGE}/phone/resend", resend_code, methods=["POST"]),
        Route(f"{PAGE}/phone/remove", remove_phone, methods=["POST"]),
    ]
