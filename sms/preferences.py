"""Each patient's notification preferences, and every change to them audited.

The defaults are the quiet ones: no SMS until a verified number and an explicit opt-in,
no calls, no voicemail, no e-mail (offered once the account's address is verified, and
off until the patient turns it on: an address given to sign in is no consent to notices
in that inbox, which others may read), quiet hours 21:00-08:00 in the patient's zone, at most one
notification a day and three a week (the FCC's limits for healthcare messages), and no
consent to anything beyond the generic notice on an insecure channel (sms.consent: the
care team's name only under a consent to the text in force).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field, field_validator
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge import time_zones as time_zones_module
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity.interfaces import verified_email_of_patient
from sms import consent, contacts
from sms.dispatcher import Prefs
from sms.models import OptOut, Preferences

HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class PreferenceError(Exception):
    """A change the patient cannot make yet; the message says why (for the page)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def time_zones() -> frozenset[str]:
    """The zones a patient may choose: canonical IANA names only (no ``localtime``,
    ``Factory`` or aliases; carebridge.time_zones)."""
    return time_zones_module.canonical()


class PreferenceChanges(BaseModel):
    """A full set of preferences, as the page's form or the API's body gives it."""

    sms_enabled: bool = False
    voice_enabled: bool = False
    voicemail_enabled: bool = False
    email_enabled: bool = False
    time_zone: str = Field(max_length=64)
    quiet_start: str = Field(pattern=HHMM)
    quiet_end: str = Field(pattern=HHMM)
    daily_cap: int = Field(ge=0, le=10)
    weekly_cap: int = Field(ge=0, le=50)
    # The care team's name in notices (sms.consent): giving it, or renewing it for a new
    # consent text, names the text version the patient was shown and agreed to.
    insecure_consent: bool = False
    insecure_consent_version: str | None = Field(
        default=None,
        max_length=32,
        description="The consent text version the patient was shown and agreed to",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not time_zones_module.is_canonical(value):
            raise ValueError(time_zones_module.PROBLEM)
        return value


def defaults(settings: Settings, patient_id: str) -> Preferences:
    return Preferences(
        patient_id=patient_id,
        sms_enabled=False,
        sms_opted_in_at=None,
        voice_enabled=False,
        voicemail_enabled=False,
        email_enabled=False,
        time_zone=settings.notify_time_zone,
        quiet_start=settings.notify_quiet_start,
        quiet_end=settings.notify_quiet_end,
        daily_cap=settings.notify_daily_cap,
        weekly_cap=settings.notify_weekly_cap,
        insecure_consent=False,
        updated_at=utcnow(),
    )


def load(db: Session, settings: Settings, patient_id: str) -> Preferences:
    """The stored preferences, or (not added to the session) the defaults."""
    return db.get(Preferences, patient_id) or defaults(settings, patient_id)


def for_dispatch(prefs: Preferences) -> Prefs:
    return Prefs(
        sms_enabled=prefs.sms_enabled,
        voice_enabled=prefs.voice_enabled,
        time_zone=prefs.time_zone,
        quiet_start=prefs.quiet_start,
        quiet_end=prefs.quiet_end,
        daily_cap=prefs.daily_cap,
        weekly_cap=prefs.weekly_cap,
        email_enabled=prefs.email_enabled,
    )


@dataclass(frozen=True)
class Snapshot:
    prefs: Preferences
    contact: contacts.ContactView | None
    email_available: bool = False  # the account has a verified address: e-mail is offered


def snapshot(runtime: Runtime, patient_id: str) -> Snapshot:
    """The preferences to show (detached: nothing here is written back).

    A zone stored under an alias (saved before aliases were refused, by an older replica,
    or one a tzdata release retired) shows as its canonical name: the same zone, so
    saving the page or PUTting the settings back keeps the patient's quiet hours. A zone
    no canonical one matches (``localtime``) stays as it is, and the page asks for one.
    """
    with runtime.sessions() as db:
        prefs = load(db, runtime.settings, patient_id)
        contact = contacts.view(db, contacts.of_patient(db, patient_id))
        email = verified_email_of_patient(db, runtime.keyring, patient_id) is not None
        db.expunge_all()
    prefs.time_zone = time_zones_module.canonical_name(prefs.time_zone) or prefs.time_zone
    return Snapshot(prefs, contact, email)


def update(
    runtime: Runtime,
    *,
    patient_id: str,
    actor: str,
    changes: PreferenceChanges,
    request_id: str | None,
    now: datetime | None = None,
) -> Preferences:
    """Store a full set of preferences (PreferenceError if one cannot be had yet)."""
    settings = runtime.settings
    now = now or utcnow()
    if changes.daily_cap > settings.notify_daily_cap:
        raise PreferenceError("daily_cap", f"At most {settings.notify_daily_cap} a day.")
    if changes.weekly_cap > settings.notify_weekly_cap:
        raise PreferenceError("weekly_cap", f"At most {settings.notify_weekly_cap} a week.")
    with transaction(runtime.sessions) as db:
        contact = contacts.of_patient(db, patient_id)
        verified = contact is not None and contact.verified_at is not None
        if (changes.sms_enabled or changes.voice_enabled) and not verified:
            field = "sms_enabled" if changes.sms_enabled else "voice_enabled"
            raise PreferenceError(field, N_("Add and verify a phone number first."))
        address = verified_email_of_patient(db, runtime.keyring, patient_id)
        if changes.email_enabled and address is None:
            raise PreferenceError("email_enabled", N_("Verify your e-mail address first."))
        prefs = db.get(Preferences, patient_id)
        if prefs is None:
            prefs = defaults(settings, patient_id)
            db.add(prefs)
        if changes.sms_enabled and not prefs.sms_enabled:
            # An explicit opt-in on our own page: it also takes the number off our list
            # (a carrier STOP still holds until the patient texts START; see delivery).
            prefs.sms_opted_in_at = now
            if contact is not None:
                opt_out = db.get(OptOut, contact.number_hash)
                if opt_out is not None:
                    db.delete(opt_out)
        try:
            consent.choose(
                db,
                prefs,
                team_name=changes.insecure_consent,
                version=changes.insecure_consent_version,
                actor=actor,
                request_id=request_id,
                now=now,
            )
        except consent.ConsentError as exc:
            raise PreferenceError("insecure_consent", exc.message) from exc
        prefs.sms_enabled = changes.sms_enabled
        prefs.voice_enabled = changes.voice_enabled
        prefs.voicemail_enabled = changes.voicemail_enabled
        prefs.email_enabled = changes.email_enabled
        prefs.time_zone = changes.time_zone
        prefs.quiet_start = changes.quiet_start
        prefs.quiet_end = changes.quiet_end
        prefs.daily_cap = changes.daily_cap
        prefs.weekly_cap = changes.weekly_cap
        prefs.updated_at = now
        audit.append(
            db,
            actor=actor,
            action="sms.preferences.update",
            outcome=Outcome.ALLOWED,
            target=f"patient:{patient_id}",
            request_id=request_id,
        )
        db.flush()
        db.expunge(prefs)
    return prefs
