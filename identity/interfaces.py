"""identity's contract: all another feature package may use of identity.

messaging and sms import identity only from here (``lint-imports`` holds it: the
contracts in pyproject.toml). They ask questions and get values back, never a model and
never a join of identity's tables; the rest of identity is private to it, free to change.
identity imports neither messaging nor sms.

A question asked inside the caller's transaction takes the caller's ``Session`` (the
answer is as of that transaction) and costs one indexed lookup; the per-request one,
:func:`person_of_token`, is a single statement that also tells whether the token was
withdrawn, so the messaging API makes one lookup per request to learn who is calling.

The implementations live in identity's modules and are re-exported here. An identity
module imports from here only what is declared at the end (the Protocols and ``Outward``),
and none that this module
imports (directly or not: accounts, authn, models, patients, sessions, oidc.holders,
oidc.models, oidc.withdrawals), or it would make an import loop.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from identity.accounts import exists as account_exists
from identity.accounts import verified_login_of as verified_email_of
from identity.authn import is_signed_in, require_second_factor
from identity.oidc.audiences import (
    AppOfPatient,
    apps_of_patient,
    apps_of_patient_query,
    client_exists,
)
from identity.oidc.holders import Person, WithdrawnError, check_client_token, in_standing
from identity.oidc.holders import person as person_of_token
from identity.patients import (
    Eligibility,
    SignedInPatient,
    eligibility,
    patient_id_of,
    require_account,
    require_patient,
    roster_patient_ids,
    verified_email_of_patient,
)
from identity.staff_access import end_staff_access

# identity's templates (its form macros, the account navigation), for pages extending them.
TEMPLATES = Path(__file__).resolve().parent / "templates"

__all__ = [
    "TEMPLATES",  # for pages that extend identity's templates
    "AccountDeleted",  # needed from outside: forget another package's data of an account
    "AppOfPatient",  # an app a patient authorized, and the patient's sub with it
    # Value types and domain errors
    "Eligibility",  # ELIGIBLE, INELIGIBLE (terminated, gone from the roster) or UNKNOWN
    "EmailSender",  # needed from outside: queues a transactional e-mail (wired in)
    "OneTimeCodeSender",  # needed from outside: queues a one-time code by SMS (wired in)
    "Outward",  # what identity needs from outside, as the composition root wired it
    "PatientFollowers",  # needed from outside: which other clients follow a patient
    "Person",  # the active account a user's token acts for, and its verified patient ID
    "RosterImported",  # needed from outside: told after a roster import (care teams)
    "SecurityNoticeTexter",  # needed from outside: texts a security notice (wired in)
    "SignedInPatient",  # the account signed in on a patient's page, and its patient ID
    "WithdrawnError",  # the token was withdrawn before it expired: a 401
    # Questions answered in the caller's transaction (its Session), with values
    "account_exists",  # is there an account with this ID?
    "apps_of_patient",  # the apps whose tokens may read the patient's data in a scope
    "apps_of_patient_query",  # the same as a query, to fold into a statement (events)
    "check_client_token",  # an app's own token: raises WithdrawnError if withdrawn
    "client_exists",  # is there an OIDC client with this ID, not disabled?
    "eligibility",  # is this patient ID on the roster, and eligible now?
    "end_staff_access",  # offboarding: the account's sessions and grants to the team's apps
    "in_standing",  # does a token still act (not withdrawn, its person's account active)?
    "is_signed_in",  # a page's request: from a finished sign-in? (never redirects)
    "patient_id_of",  # the account's verified patient ID, or None
    "person_of_token",  # whom a user's token acts for (None: no one, or not active)
    # Web guards for other packages' pages and session-authenticated API calls
    "require_account",  # the signed-in (MFA done) account's ID, or on to sign in
    "require_patient",  # ...with its patient ID, or on to /verify (step_up=True: and a
    # second factor proved in the last few minutes, for exporting messages)
    "require_second_factor",  # ...whose second factor was proved (staff need one)
    "roster_patient_ids",  # a roster source's eligible members' patient IDs
    # In the caller's transaction too: where a notice may go by e-mail
    "verified_email_of",  # the account's sign-in address if verified, else None
    "verified_email_of_patient",  # the patient's verified address, or None
]


# What identity needs from outside (wired by the composition root)
#
# identity declares these and never imports their implementations: carebridge.wiring
# gives it sms's one-time-code sender and security-notice texter, and the outbox's e-mail
# sender. All enqueue in
# the caller's transaction (the transactional outbox): sent if and only if it commits.


class OneTimeCodeSender(Protocol):
    """Texts a one-time code to a phone number the account has verified (SMS)."""

    def send_code(self, db: Session, *, to: str, code: str) -> str:
        """Queue ``code`` for ``to`` (E.164) in ``db``'s transaction; returns the outbox
        ID. The number and the code are stored sealed and wiped once sent."""


class EmailSender(Protocol):
    """Sends a transactional e-mail: IDs and links only, never PHI."""

    def send_email(
        self, db: Session, *, to: str, subject: str, text: str, html: str | None = None
    ) -> str:
        """Queue an e-mail in ``db``'s transaction; returns the outbox ID."""

    def withdraw(self, db: Session, *, to: str) -> int:
        """In ``db``'s transaction, drop the e-mails queued for ``to`` and not sent yet
        (a deleted account's); returns how many."""


class SecurityNoticeTexter(Protocol):
    """Texts a security notice to a patient's verified phone number (SMS): one generic
    sentence and a "this wasn't me" link, nothing else (no PHI, nothing naming a
    condition). Sent whatever the patient's message-notification preferences say (it is
    about the account, not care), never to a number that opted out (STOP)."""

    def send_security_notice(self, db: Session, *, patient_id: str, link: str) -> str | None:
        """Queue the notice in ``db``'s transaction; returns the outbox ID, or None when
        the patient has no verified number that may take it."""


class AccountDeleted(Protocol):
    """Told when an account is deleted, to forget what another package keeps for it."""

    def account_deleted(self, db: Session, *, account_id: str, patient_id: str | None) -> None:
        """In ``db``'s transaction (the deletion's), delete the per-person data kept for
        ``account_id`` or its patient ID (contact points, notification preferences);
        never the care record: the patient ID and its messages stay."""


class RosterImported(Protocol):
    """Told after a roster import committed, so what follows the roster (messaging's care
    relationships of the teams fed by that source) follows it too."""

    def roster_imported(self, *, source: str) -> None:
        """After the import's transaction; ``roster_patient_ids`` says who is on it now."""


class PatientFollowers(Protocol):
    """Which clients follow a patient besides the apps the patient authorized: the care
    teams' clients (messaging knows the teams). identity tells them, by patient ID, of
    what happened to the patient's account or roster link (identity.events)."""

    def clients_following(
        self, db: Session, patient_ids: Collection[str]
    ) -> Mapping[str, Sequence[str]]:
        """In ``db``'s transaction: patient ID -> the IDs of the clients following it
        (a patient no client follows is absent)."""


@dataclass(frozen=True)
class Outward:
    """Everything identity needs from outside, as the composition root wired it."""

    one_time_codes: OneTimeCodeSender
    email: EmailSender
    account_deleted: AccountDeleted
    security_texts: SecurityNoticeTexter
    followers: PatientFollowers
    # None: nothing follows the roster (tests that need no care teams).
    roster_imported: RosterImported | None = None
