"""The insecure-channel consent: what a notice by SMS, call or e-mail may say.

Two levels, each the patient's recorded choice: ``generic`` (the default: "you have a
new secure message" and the link, nothing else) or ``team_name`` (the care team that
wrote is named too). The team's name is said only under a consent to the text version
in force (sms.texts.CONSENT_VERSION): a new text stops the old consents from applying,
and the preferences page asks again; until the patient agrees, notices are generic.

The current state is on the preferences row (``insecure_consent``, its version and
time), which the outbox worker locks while it decides a patient's notices: a change
waits for a claim in progress, or the claim reads the change. The history (given,
changed to a new version, withdrawn; the level and version, the time) is in the audit
log. Whatever the level, no message content ever goes by SMS, call or e-mail.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.i18n import N_
from sms import texts
from sms.dispatcher import Level
from sms.models import Preferences

__all__ = ["ConsentError", "Level", "choose", "in_force", "needs_asking"]


class ConsentError(Exception):
    """Consent to a text the patient was not shown (an old version, or none)."""

    message = N_("Read the current consent text and agree to it before you choose this.")


def in_force(prefs: Preferences) -> Level:
    """The level notices follow now: TEAM_NAME only under the text version in force."""
    if prefs.insecure_consent and prefs.insecure_consent_version == texts.CONSENT_VERSION:
        return Level.TEAM_NAME
    return Level.GENERIC


def needs_asking(prefs: Preferences) -> bool:
    """The patient agreed to an older text: the page shows the new one and asks again."""
    return prefs.insecure_consent and prefs.insecure_consent_version != texts.CONSENT_VERSION


def _record(
    db: Session, prefs: Preferences, what: str, *, version: str | None, actor: str, rid: str | None
) -> None:
    level = Level.TEAM_NAME if prefs.insecure_consent else Level.GENERIC
    audit.append(
        db,
        actor=actor,
        action=f"sms.consent.{what}",
        outcome=Outcome.ALLOWED,
        # IDs and the version only: the history of who agreed to which words, and when
        # (the record's own time).
        target=f"patient:{prefs.patient_id} level:{level} version:{version or '-'}",
        request_id=rid,
    )


def choose(
    db: Session,
    prefs: Preferences,
    *,
    team_name: bool,
    version: str | None,
    actor: str,
    request_id: str | None,
    now: datetime,
) -> None:
    """Apply the patient's choice, in the caller's transaction (preferences row held).

    ``version``: the consent text the patient was shown and agreed to. Giving consent,
    or renewing it for a new text, needs the version in force; keeping an earlier
    consent (saving other settings) changes nothing, and it stays inactive. Choosing
    generic withdraws at once. Raises :class:`ConsentError` for a consent to a text the
    patient was not shown.
    """
    if not team_name:
        if prefs.insecure_consent:
            withdrawn = prefs.insecure_consent_version
            prefs.insecure_consent = False
            prefs.insecure_consent_version, prefs.insecure_consent_at = None, None
            _record(db, prefs, "withdrawn", version=withdrawn, actor=actor, rid=request_id)
        return
    current = version == texts.CONSENT_VERSION
    if prefs.insecure_consent and (not current or in_force(prefs) is Level.TEAM_NAME):
        return  # kept as it is (in force, or waiting to be renewed)
    if not current:
        raise ConsentError(ConsentError.message)
    what = "changed" if prefs.insecure_consent else "given"
    prefs.insecure_consent = True
    prefs.insecure_consent_version, prefs.insecure_consent_at = texts.CONSENT_VERSION, now
    _record(db, prefs, what, version=texts.CONSENT_VERSION, actor=actor, rid=request_id)
