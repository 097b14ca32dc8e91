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

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from identity.accounts import exists as account_exists
from identity.authn import is_signed_in
from identity.oidc.holders import Person, WithdrawnError, check_client_token
from identity.oidc.holders import person as person_of_token
from identity.patients import (
    Eligibility,
    SignedInPatient,
    eligibility,
    patient_id_of,
    require_account,
    require_patient,
    roster_patient_ids,
)

# identity's templates (its form macros, the account navigation), for pages extending them.
TEMPLATES = Path(__file__).resolve().parent / "templates"

__all__ = [
    "TEMPLATES",  # for pages that extend identity's templates
    "AccountDeleted",  # needed from outside: forget another package's data of an account
    # Value types and domain errors
    "Eligibility",  # ELIGIBLE, INELIGIBLE (terminated, gone from the roster) or UNKNOWN
    "EmailSender",  # needed from outside: queues a transactional e-mail (wired in)
    "OneTimeCodeSender",  # needed from outside: queues a one-time code by SMS (wired in)
    "Outward",  # the two senders, as the composition root wired them
    "Person",  # the active account a user's token acts for, and its verified patient ID
    "RosterImported",  # needed from outside: told after a roster import (care teams)
    "SignedInPatient",  # the account signed in on a patient's page, and its patient ID
    "WithdrawnError",  # the token was withdrawn before it expired: a 401
    # Questions answered in the caller's transaction (its Session), with values
    "account_exists",  # is there an account with this ID?
    "check_client_token",  # an app's own token: raises WithdrawnError if withdrawn
    "eligibility",  # is this patient ID on the roster, and eligible now?
    "is_signed_in",  # a page's request: from a finished sign-in? (never redirects)
    "patient_id_of",  # the account's verified patient ID, or None
    "person_of_token",  # whom a user's token acts for (None: no one, or not active)
    # Web guards for other packages' pages and session-authenticated API calls
    "require_account",  # the signed-in (MFA done) account's ID, or on to sign in
    "require_patient",  # ...with its patient ID, or on to /verify (step_up=True: and a
    "roster_patient_ids",  # a roster source's eligible members' patient IDs
    # second factor proved in the last few minutes, for exporting messages)
]


# What identity needs from outside (wired by the composition root)
#
# identity declares these and never imports their implementations: carebridge.wiring
# gives it sms's one-time-code sender and the outbox's e-mail sender. Both enqueue in
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


@dataclass(frozen=True)
class Outward:
    """Everything identity needs from outside, as the composition root wired it."""

    one_time_codes: OneTimeCodeSender
    email: EmailSender
    account_deleted: AccountDeleted
    # None: nothing follows the roster (tests that need no care teams).
    roster_imported: RosterImported | None = None
