"""Changing an account's e-mail address, and undoing the change from the old address.

Asking (:func:`request_change`): a signed-in, stepped-up session (identity/authn.py)
names a new address, normalised and checked as at sign-up. A verification of purpose
``change`` (identity/email_verification.py: a 256-bit link token and an 8-character
code, keyed hashes, single use, 24 hours, void after 5 wrong codes) goes to the NEW
address; its code works only in the session that asked. An address another account
has gets the same answer, and its owner the "someone tried to use your address" notice
(``email_change_attempted``) instead. Both count under the address's hourly e-mail
budget (``throttle.EMAIL_TO``); requests count per account and per client address.

Completing (:func:`confirm_code`, :func:`confirm_link`): the code or the link comes
back; in one transaction the login identifier becomes the new address (verified now,
``changed_at`` now), the old address gets a notice with an undo link valid
:data:`UNDO_FOR` (7 days), the new one a confirmation. These two e-mails are not held
back by the hourly budget: a flood of sign-up attempts with the old address must not
suppress its undo link.

Undoing (:func:`check_undo`, :func:`undo`): the undo link proves the old mailbox, in
any browser, signed in or not. It completes only together with a new password (the
page asks for it there): then, in one transaction, the old address is the login again
(verified), the new password is set, every session and every app grant of the account
ends, pending reset links and verifications stop working, and both addresses get a
notice. Until the new password is submitted nothing changes. If the old address has
meanwhile become another account's, the undo is refused (:class:`AddressTakenError`).
Undoing a change voids the undo links of the account's later changes (they went to
addresses the undo takes away).

Recovery through the new address waits: identity/flows/reset.py sends no reset link to
an address that replaced another less than :data:`UNDO_FOR` ago (:func:`recently_changed`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from identity import accounts, authn, email_verification, emails, recovery, sessions, throttle
from identity.credentials import password
from identity.interfaces import EmailSender
from identity.models import (
    Account,
    AuthSession,
    EmailChange,
    EmailVerification,
    LoginIdentifier,
    PasswordCredential,
    PasswordReset,
    new_id,
)
from identity.oidc import backchannel, withdrawals

UNDO_DAYS = 7
UNDO_FOR = timedelta(days=UNDO_DAYS)
CONFIRM_PATH = "/email/change/confirm"
UNDO_PATH = "/email/undo"
MAX_TOKEN_LENGTH = 200


class Result(StrEnum):
    SENT = "sent"  # a code is on its way (or the taken address's owner was told)
    STEP_UP = "step_up"  # the session is not (or no longer) stepped up
    NO_ADDRESS = "no_address"  # the account has no address to change (add one instead)
    SAME = "same"  # that is already the account's address
    GONE = "gone"  # the session ended meanwhile


@dataclass(frozen=True)
class Requested:
    outcome: Result
    step: authn.StepUp = authn.StepUp.DONE


class TooManyError(Exception):
    """Past a throttle's budget: wait."""


class FailedError(Exception):
    """A code or link that does not work, whatever the reason: one answer."""


class AddressTakenError(Exception):
    """The undo cannot restore the old address: another account uses it now."""


class PolicyError(Exception):
    """The new password breaks the policy; the message says why."""


def recently_changed(changed_at: datetime | None, now: datetime) -> bool:
    """Whether an address replaced the previous one less than 7 days ago."""
    return changed_at is not None and now - changed_at < UNDO_FOR


def _undo_hash(runtime: Runtime, token: str) -> str:
    return runtime.keyring.lookup_hash("email-change-undo", token)


def _binding(session: AuthSession) -> str:
    # The code is bound to the session that asked: its token's hash (the session's ID).
    return session.token_hash


def _audit(  # noqa: PLR0917  (each call names what happened, in one line)
    db: Session,
    action: str,
    outcome: Outcome,
    target: str,
    request_id: str | None,
    actor: str = "anonymous",
) -> None:
    audit.append(
        db, actor=actor, action=action, outcome=outcome, target=target, request_id=request_id
    )


def _link(runtime: Runtime, path: str) -> str:
    return runtime.settings.issuer.rstrip("/") + path


# Asking


def request_change(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    new_login: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> Requested:
    """Send a code and link to ``new_login`` (normalised, checked) for the session's
    account; TooManyError past the account's or the client address's budget."""
    account_id = session.account_id
    actor = f"account:{account_id}"
    store = throttle.store_for(runtime.settings)
    limits = [
        throttle.address_limit(runtime.keyring, client_host, throttle.EMAIL_CHANGE_ADDRESS),
        throttle.Limit(
            throttle.EMAIL_CHANGE_ACCOUNT, f"{throttle.EMAIL_CHANGE_ACCOUNT.prefix}:{account_id}"
        ),
    ]
    now = throttle.utcnow()
    locked = False
    with transaction(runtime.sessions) as db:
        current = db.get(AuthSession, session.token_hash)
        if current is None:
            return Requested(Result.GONE)
        step = authn.step_up_of(db, runtime, current)
        if step is not authn.StepUp.DONE:
            return Requested(Result.STEP_UP, step)
        login = db.get(LoginIdentifier, account_id)
        if login is None:
            return Requested(Result.NO_ADDRESS)
        new_hash = accounts.login_hash(runtime.keyring, new_login)
        if secrets.compare_digest(new_hash, login.lookup_hash):
            return Requested(Result.SAME)
        if store.attempt(db, limits, now) is None:
            locked = True
            _audit(db, "identity.email.change.request", Outcome.DENIED, actor, request_id, actor)
        else:
            taken = db.scalar(
                select(LoginIdentifier.account_id).where(LoginIdentifier.lookup_hash == new_hash)
            )
            if taken is not None:
                email_verification.notify_taken(
                    db, runtime, sender, to=new_login, template="email_change_attempted"
                )
            else:
                verification_id = email_verification.issue(
                    db,
                    runtime,
                    sender,
                    account_id=account_id,
                    purpose=email_verification.CHANGE,
                    to=new_login,
                    pending_token=_binding(current),
                    template="email_change_verify",
                    link_path=CONFIRM_PATH,
                )
                row = db.get(EmailVerification, verification_id) if verification_id else None
                if row is not None and row.address_encrypted is not None:
                    db.add(
                        EmailChange(
                            id=new_id("emc"),
                            account_id=account_id,
                            verification_id=row.id,
                            new_address_hash=new_hash,
                            new_address_encrypted=row.address_encrypted,
                            created_at=now,
                        )
                    )
            # The same record whether the address was free or taken.
            _audit(db, "identity.email.change.request", Outcome.ALLOWED, actor, request_id, actor)
    if locked:
        raise TooManyError
    return Requested(Result.SENT)


def end_pending(db: Session, account_id: str, now: datetime) -> None:
    """The account's pending changes of address stop: their codes and links no longer
    work (after a password reset, whoever asked with the old password is out)."""
    db.execute(
        update(EmailVerification)
        .where(
            EmailVerification.account_id == account_id,
            EmailVerification.purpose == email_verification.CHANGE,
            EmailVerification.used_at.is_(None),
            EmailVerification.expires_at > now,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )


# Completing


def _complete(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    row: EmailVerification,
    *,
    now: datetime,
    request_id: str | None,
) -> bool:
    """Apply the change ``row`` (used just now) proved; False if it cannot be (the
    address became another account's meanwhile, the account is not active)."""
    change = db.scalar(
        select(EmailChange).where(
            EmailChange.verification_id == row.id, EmailChange.completed_at.is_(None)
        )
    )
    status = db.scalar(select(Account.status).where(Account.id == row.account_id))
    login = db.get(LoginIdentifier, row.account_id, with_for_update=True)
    if (
        change is None
        or login is None
        or status != accounts.ACTIVE
        or row.address_hash is None
        or row.address_encrypted is None
    ):
        return False
    sealed_as = associated_data("login", row.account_id)
    old_hash, old_sealed = login.lookup_hash, login.encrypted
    old_verified, old_changed_at = login.verified_at is not None, login.changed_at
    try:
        with db.begin_nested():
            db.execute(
                update(LoginIdentifier)
                .where(LoginIdentifier.account_id == row.account_id)
                .values(
                    lookup_hash=row.address_hash,
                    encrypted=row.address_encrypted,
                    verified_at=now,
                    changed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
    except IntegrityError:
        return False
    undo_token = secrets.token_urlsafe(32)
    change.completed_at = now
    change.old_address_hash = old_hash
    change.old_address_encrypted = old_sealed
    change.old_changed_at = old_changed_at
    if old_verified:
        # Only a verified address gets the undo link: an unverified one may be anyone's.
        change.undo_token_hash = _undo_hash(runtime, undo_token)
        change.undo_until = now + UNDO_FOR
        old_address = runtime.keyring.decrypt(old_sealed, sealed_as).decode("utf-8")
        emails.send(
            db,
            sender,
            runtime.settings,
            to=old_address,
            email=emails.Email(
                "email_changed",
                link=f"{_link(runtime, UNDO_PATH)}?token={undo_token}",
                days=UNDO_DAYS,
            ),
        )
    new_address = runtime.keyring.decrypt(row.address_encrypted, sealed_as).decode("utf-8")
    emails.send(
        db,
        sender,
        runtime.settings,
        to=new_address,
        email=emails.Email("email_change_done", link=_link(runtime, "/signin"), days=UNDO_DAYS),
    )
    target = f"account:{row.account_id}"
    _audit(db, "identity.email.change", Outcome.ALLOWED, target, request_id, target)
    return True


def _latest_for(db: Session, runtime: Runtime, session: AuthSession) -> EmailVerification | None:
    return db.scalar(
        select(EmailVerification)
        .where(
            EmailVerification.account_id == session.account_id,
            EmailVerification.purpose == email_verification.CHANGE,
            EmailVerification.browser_hash
            == email_verification.browser_hash(runtime, _binding(session)),
        )
        .order_by(EmailVerification.created_at.desc())
        .limit(1)
    )


def confirm_code(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    code: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> None:
    """The code typed in the session that asked: the change is made, or FailedError /
    TooManyError."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    account = email_verification.account_limit(session.account_id)
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    target = f"account:{session.account_id}"
    with transaction(runtime.sessions) as db:
        if store.attempt(db, [address, account], now) is None:
            _audit(db, "identity.email.change.verify", Outcome.DENIED, target, request_id)
            locked, done = True, False
        else:
            locked = False
            row = _latest_for(db, runtime, session)
            live = email_verification.usable(row, now)
            matches = email_verification.code_matches(runtime, row, code) and live
            done = bool(
                row is not None
                and matches
                and email_verification.claim(db, row, now)
                and _complete(db, runtime, sender, row, now=now, request_id=request_id)
            )
            if done:
                throttle.settle(store, db, reset=[account], refund=[address], now=now)
            else:
                _audit(db, "identity.email.change.verify", Outcome.FAILED, target, request_id)
                voided = (
                    row is not None
                    and live
                    and not matches
                    and email_verification.count_failure(db, row)
                )
                if voided:
                    _audit(db, "identity.email.change.void", Outcome.DENIED, target, request_id)
    if locked:
        raise TooManyError
    if not done:
        raise FailedError


def confirm_link(
    runtime: Runtime,
    sender: EmailSender,
    token: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> None:
    """The link's token, in any browser: the change is made (nobody is signed in), or
    FailedError / TooManyError."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        if store.attempt(db, [address], now) is None:
            _audit(db, "identity.email.change.verify", Outcome.DENIED, address.key, request_id)
            locked, done = True, False
        else:
            locked = False
            row = email_verification.by_token(db, runtime, token[:MAX_TOKEN_LENGTH], change=True)
            done = bool(
                row is not None
                and email_verification.usable(row, now)
                and email_verification.claim(db, row, now)
                and _complete(db, runtime, sender, row, now=now, request_id=request_id)
            )
            if done:
                throttle.settle(store, db, reset=[], refund=[address], now=now)
            else:
                _audit(db, "identity.email.change.verify", Outcome.FAILED, address.key, request_id)
    if locked:
        raise TooManyError
    if not done:
        raise FailedError


# Undoing


@dataclass(frozen=True)
class UndoTicket:
    change_id: str
    account_id: str
    old_address: str


def check_undo(
    runtime: Runtime, token: str, *, client_host: str | None, request_id: str | None = None
) -> UndoTicket:
    """The change an undo link names, if it can still be undone; else FailedError
    (unknown, truncated, expired, used) or TooManyError. Counted per client address and,
    once it names a change, per account; a working link takes both back."""
    store = throttle.store_for(runtime.settings)
    address = throttle.address_limit(runtime.keyring, client_host, throttle.EMAIL_UNDO_ADDRESS)
    now = throttle.utcnow()
    ticket: UndoTicket | None = None
    locked = False
    with transaction(runtime.sessions) as db:
        target = address.key
        outcome = Outcome.FAILED
        if store.attempt(db, [address], now) is None:
            locked = True
            outcome = Outcome.DENIED
        else:
            token = token[:MAX_TOKEN_LENGTH]
            change = db.scalar(
                select(EmailChange).where(EmailChange.undo_token_hash == _undo_hash(runtime, token))
            )
            if change is not None:
                target = f"account:{change.account_id}"
                account = throttle.Limit(
                    throttle.EMAIL_UNDO_ACCOUNT,
                    f"{throttle.EMAIL_UNDO_ACCOUNT.prefix}:{change.account_id}",
                )
                if store.attempt(db, [account], now) is None:
                    outcome = Outcome.DENIED
                elif (
                    change.undone_at is None
                    and change.undo_until is not None
                    and change.undo_until > now
                    and change.old_address_encrypted is not None
                ):
                    old = runtime.keyring.decrypt(
                        change.old_address_encrypted,
                        associated_data("login", change.account_id),
                    ).decode("utf-8")
                    ticket = UndoTicket(change.id, change.account_id, old)
                    throttle.settle(store, db, reset=[account], refund=[address], now=now)
        if ticket is None:
            _audit(db, "identity.email.change.undo_link", outcome, target, request_id)
    if locked:
        raise TooManyError
    if ticket is None:
        raise FailedError
    return ticket


def undo(
    runtime: Runtime,
    sender: EmailSender,
    token: str,
    new_password: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> str:
    """Undo a change with its link and a new password (run it in the thread pool: it
    hashes); returns the account ID. Raises as :func:`check_undo` does, PolicyError (the
    link still works), or AddressTakenError."""
    ticket = check_undo(runtime, token, client_host=client_host, request_id=request_id)
    problem = password.policy_problem(
        new_password, login=ticket.old_address, min_length=runtime.settings.password_min_length
    )
    if problem:
        raise PolicyError(problem)
    new_hash = password.hash_password(runtime.settings, new_password)
    now = throttle.utcnow()
    account_id = ticket.account_id
    actor = f"account:{account_id}"
    try:
        with transaction(runtime.sessions) as db:
            _undo(db, runtime, sender, ticket, new_hash=new_hash, now=now, request_id=request_id)
    except AddressTakenError:
        with transaction(runtime.sessions) as db:
            _audit(db, "identity.email.change.undo", Outcome.DENIED, actor, request_id)
        raise
    except FailedError:
        with transaction(runtime.sessions) as db:
            _audit(db, "identity.email.change.undo", Outcome.FAILED, actor, request_id)
        raise
    return account_id


def _undo(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    ticket: UndoTicket,
    *,
    new_hash: str,
    now: datetime,
    request_id: str | None,
) -> None:
    account_id = ticket.account_id
    # The undo ends every session: the session lock first (identity.sessions); the
    # status read under it is current.
    lock = sessions.lock_account_sessions(db, account_id)
    # The claim: one conditional UPDATE, so two uses racing cannot both pass.
    claimed = db.execute(
        update(EmailChange)
        .where(
            EmailChange.id == ticket.change_id,
            EmailChange.undone_at.is_(None),
            EmailChange.undo_until > now,
        )
        .values(undone_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    change = db.get(EmailChange, ticket.change_id)
    login = db.get(LoginIdentifier, account_id, with_for_update=True)
    if (
        not claimed
        or lock is None
        or lock.status != accounts.ACTIVE
        or change is None
        or login is None
        or change.old_address_hash is None
        or change.old_address_encrypted is None
    ):
        raise FailedError
    replaced = accounts.login_of(db, runtime.keyring, account_id)
    owner = db.scalar(
        select(LoginIdentifier.account_id).where(
            LoginIdentifier.lookup_hash == change.old_address_hash
        )
    )
    if owner is not None and owner != account_id:
        raise AddressTakenError
    try:
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(
                lookup_hash=change.old_address_hash,
                encrypted=change.old_address_encrypted,
                verified_at=now,
                changed_at=change.old_changed_at,
            )
            .execution_options(synchronize_session=False)
        )
    except IntegrityError:  # taken a moment ago by another transaction (rolled back)
        raise AddressTakenError from None
    credential = db.get(PasswordCredential, account_id, with_for_update=True)
    if credential is None:
        db.add(PasswordCredential(account_id=account_id, hash=new_hash, changed_at=now))
    else:
        credential.hash = new_hash
        credential.changed_at = now
    # Whatever the new address's holder started stops: reset links, verifications, every
    # session, every app's grant.
    db.execute(
        update(PasswordReset)
        .where(
            PasswordReset.account_id == account_id,
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > now,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(EmailVerification)
        .where(
            EmailVerification.account_id == account_id,
            EmailVerification.used_at.is_(None),
            EmailVerification.expires_at > now,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    # So does a lost-second-factor recovery started meanwhile (the owner is back).
    recovery.end_open(db, runtime, sender, lock, reason="email_undone", request_id=request_id)
    # A later change's undo link went to an address this undo takes away (an intruder
    # may have changed the address twice): it stops working, so it cannot take the
    # account back from the owner. Earlier changes' links, to older addresses, still work.
    if change.completed_at is not None:
        db.execute(
            update(EmailChange)
            .where(
                EmailChange.account_id == account_id,
                EmailChange.id != change.id,
                EmailChange.completed_at >= change.completed_at,
                EmailChange.undone_at.is_(None),
                EmailChange.undo_until > now,
            )
            .values(undo_until=now)
            .execution_options(synchronize_session=False)
        )
    sessions.revoke_all(db, lock)
    backchannel.queue(db, account_id)
    withdrawals.end_grants(db, account_id)
    forgot = _link(runtime, "/password/forgot")
    for address in dict.fromkeys((ticket.old_address, replaced)):
        if address:
            emails.send(
                db,
                sender,
                runtime.settings,
                to=address,
                email=emails.Email("email_change_undone", link=forgot),
            )
    actor = f"account:{account_id}"
    _audit(db, "identity.email.change.undo", Outcome.ALLOWED, actor, request_id, actor)
