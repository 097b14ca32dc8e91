"""Deleting an account: by its owner (identity/flows/delete_account.py) or for an erasure
request made to the organization (the admin API and ``carebridge accounts delete``).

What goes, in one transaction: the sign-in methods (the login identifier, the password,
the authenticator, the recovery codes, the linked upstream identities), every session,
every grant to an app (refresh tokens revoked and deleted, access tokens withdrawn, as
disabling ends them), remembered consents and pairwise subjects, the link to the patient
ID, and what other packages keep for the person (contact points and notification
preferences: :class:`identity.interfaces.AccountDeleted`, wired by the composition root).
Tables of other packages that point at the account (care-team staff membership) go by
their foreign keys' ``ON DELETE CASCADE``.

What stays: the patient ID on the roster and everything the care record holds under it
(threads, messages, attachments, under the care team's retention and legal holds), the
audit log (IDs only), and staff actions' records. The patient can verify again later
with a new account and find their messages.

The owner is told at their verified address, queued before the address is deleted (the
outbox row is sealed, and wiped once sent).

Nothing queued for the person is left behind: the e-mails not yet sent to any address
the account held (its login, a pending or completed change's addresses, an address being
verified) are withdrawn before that notice is queued, so the notice is the one that goes
out; not those to an address another account holds too (anyone can type one to add or
change to): that mail may be the other account's (:func:`_withdrawable`). sms drops its
unsent notifications for the patient (through ``AccountDeleted``); the throttle counters
keyed by the account ID go, in the database or Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from identity import accounts, events, notices, patients, sessions, throttle
from identity.flows import mfa
from identity.interfaces import Outward
from identity.models import (
    Account,
    AuthSession,
    EmailChange,
    EmailVerification,
    LoginIdentifier,
    PasswordCredential,
    PasswordReset,
    PatientLink,
    RecoveryCode,
    RecoveryRequest,
    TotpCredential,
    UpstreamIdentity,
)
from identity.notices import Notice
from identity.oidc import backchannel, withdrawals
from identity.oidc.models import (
    OidcAuthorizationCode,
    OidcConsent,
    OidcRefreshToken,
    OidcSubject,
)

ACTION = "identity.account.delete"

# Every table of identity's holding a row per account, deleted explicitly (their foreign
# keys cascade too; being explicit keeps the list reviewable). The account row is last.
_PER_ACCOUNT = (
    AuthSession,
    RecoveryCode,
    TotpCredential,
    PasswordCredential,
    UpstreamIdentity,
    PatientLink,
    OidcConsent,
    OidcRefreshToken,
    OidcAuthorizationCode,
    OidcSubject,
    EmailChange,
    EmailVerification,
    PasswordReset,
    RecoveryRequest,
    LoginIdentifier,
)


_THROTTLES = (*throttle.KEYED_BY_ACCOUNT, mfa.SECOND_STEP)


def _addresses(db: Session, runtime: Runtime, account_id: str) -> set[str]:
    """Every address the account holds, decrypted (all sealed as its login is)."""
    login = select(LoginIdentifier.encrypted).where(LoginIdentifier.account_id == account_id)
    sealed: list[bytes | None] = list(db.scalars(login))
    for new, old in db.execute(
        select(EmailChange.new_address_encrypted, EmailChange.old_address_encrypted).where(
            EmailChange.account_id == account_id
        )
    ):
        sealed += [new, old]
    sealed += db.scalars(
        select(EmailVerification.address_encrypted).where(
            EmailVerification.account_id == account_id
        )
    )
    bound = associated_data("login", account_id)
    return {runtime.keyring.decrypt(blob, bound).decode("utf-8") for blob in sealed if blob}


def _withdrawable(db: Session, runtime: Runtime, account_id: str, address: str) -> bool:
    """Whether the mail queued to ``address`` is this account's alone to withdraw.

    The outbox knows a recipient, not an account. The account's verified login is its
    own mailbox; any other address it holds (one typed to add or change to, an old one, a
    login never verified) anybody could have typed, and mail queued to it for another
    account that holds it too (its login, its change or verification in progress: a
    reset link, a recovery notice) must not go with this deletion.
    """
    address_hash = accounts.login_hash(runtime.keyring, address)
    login = db.get(LoginIdentifier, account_id)
    if login is not None and login.verified_at is not None and login.lookup_hash == address_hash:
        return True
    elsewhere = (
        (LoginIdentifier, LoginIdentifier.lookup_hash == address_hash),
        (EmailVerification, EmailVerification.address_hash == address_hash),
        (
            EmailChange,
            or_(
                EmailChange.new_address_hash == address_hash,
                EmailChange.old_address_hash == address_hash,
            ),
        ),
    )
    return not any(
        db.scalar(select(model.account_id).where(held, model.account_id != account_id).limit(1))
        for model, held in elsewhere
    )


@dataclass(frozen=True)
class Deleted:
    account_id: str
    # The patient ID the account was linked to: it stays, with its care record.
    patient_id: str | None
    notice_sent: bool


def delete_account(
    db: Session,
    runtime: Runtime,
    outward: Outward,
    account_id: str,
    *,
    actor: str,
    action: str = ACTION,
    request_id: str | None = None,
) -> Deleted | None:
    """Delete the account in ``db``'s transaction; None if there is no such account.
    ``action``: what the audit record calls it (a declined sign-up is one, too)."""
    # Its sessions go: the session lock first, so none is raised or started meanwhile.
    if sessions.lock_account_sessions(db, account_id) is None:
        return None
    patient_id = patients.patient_id_of(db, account_id)
    for address in sorted(_addresses(db, runtime, account_id)):
        if _withdrawable(db, runtime, account_id, address):
            outward.email.withdraw(db, to=address)
    # Queued (sealed) while the address is still known, after the withdrawal above.
    sent = notices.send(db, runtime, outward.email, account_id, Notice.ACCOUNT_DELETED)
    # Told while the grants still say who could read the patient.
    events.account_deleted(db, outward.followers, account_id)
    backchannel.queue(db, account_id)
    withdrawals.end_grants(db, account_id)
    outward.account_deleted.account_deleted(db, account_id=account_id, patient_id=patient_id)
    for model in _PER_ACCOUNT:
        db.execute(delete(model).where(model.account_id == account_id))
    db.execute(delete(Account).where(Account.id == account_id))
    throttle.forget_account(throttle.store_for(runtime.settings), db, account_id, _THROTTLES)
    audit.append(
        db,
        actor=actor,
        action=action,
        outcome=Outcome.ALLOWED,
        target=f"account:{account_id}",
        request_id=request_id,
    )
    return Deleted(account_id, patient_id, sent)
