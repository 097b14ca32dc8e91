"""Lost second factor without a recovery code: re-proving identity, a waiting period,
"this wasn't me", then a new authenticator.

Self-service (``kind="self"``), from the second step of a sign-in (a level-1 session
whose first factor was the password: a social sign-in is refused, as at every step a
session drives, since its provider may be the very mailbox the link goes to):

1. :func:`start`: refused (nothing sent) without a verified address, without a roster
   link (nothing to check the person against), or within :data:`RECENT_CHANGE` of a
   password reset or an e-mail change (those are what a takeover changes first). Else a
   link (selector + 256 random bits) to the verified address, bound to the asking
   session's handle, valid :data:`LINK_VALID_FOR`.
2. :func:`open_link`: the link works only in the session that asked (anywhere else it
   does nothing but say so); single use.
3. :func:`prove_identity`: date of birth + SSN last 4 against the account's OWN roster
   record, counted by the roster's own verification policies (``throttle.VERIFY_*``: the
   account's 5 failures lock until staff review). A match starts the wait.

Staff-assisted (``kind="staff"``): :func:`start_staff` (CLI, admin API) records the
operator, the evidence and the reason, and e-mails a one-time code (128 bits) to the
verified address only; :func:`enter_code` at the second step (a password sign-in too)
starts the wait.

The wait (``CAREBRIDGE_RECOVERY_WAIT_HOURS``): a notice to the verified address with a
"this wasn't me" link valid for the whole wait (:func:`cancel_by_link`), and the same link
texted to the patient's verified number if it has one (``SecurityNoticeTexter``: a
generic sentence, whatever its notification preferences; not at the start, which the
password alone can ask for, so it would let whoever has it text the owner at will). A completed
two-factor sign-in cancels every open request (:func:`cancel_on_sign_in`). After the
wait, :func:`complete` (a password sign-in of the account) removes the authenticator and
recovery codes, ends every other session and app grant, and leaves the session at the
enrolment step; a notice says so (by e-mail, and by SMS with the forgot-password link).
Secrets are stored as keyed hashes, compared in constant time, single use. Every step
is audited (never a value).
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import accounts, emails, notices, sessions, throttle
from identity.credentials import recovery as recovery_codes
from identity.credentials import totp
from identity.interfaces import EmailSender, SecurityNoticeTexter
from identity.models import (
    Account,
    AuthSession,
    LoginIdentifier,
    PasswordReset,
    PatientLink,
    RecoveryRequest,
    RosterMember,
    new_id,
)
from identity.oidc import backchannel, withdrawals
from identity.roster import staff
from identity.roster.hashes import RosterHashes

RECENT_CHANGE = timedelta(days=7)
LINK_VALID_FOR = timedelta(minutes=30)
STAFF_CODE_VALID_FOR = timedelta(hours=72)
LINK_PATH = "/recovery/link"
CANCEL_PATH = "/recovery/cancel"
_SELECTOR = "rcv"
_TOKEN = re.compile(r"rcv_[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}")
MAX_TOKEN_LENGTH = 200
MAX_EVIDENCE = 500

STARTED = "started"
WAITING = "waiting"
CANCELLED = "cancelled"
COMPLETED = "completed"
OPEN = (STARTED, WAITING)


class Refusal(StrEnum):
    NO_ADDRESS = "no_address"  # no verified address: contact support
    NO_ROSTER = "no_roster"  # not linked to a roster record: contact support
    RECENT_CHANGE = "recent_change"  # a reset or an e-mail change in the last 7 days
    # The session's first factor was not the password (a social sign-in, whose provider
    # may also be the mailbox, or a session from before first factors were recorded).
    PASSWORD_SIGN_IN = "password_sign_in"  # noqa: S105  (a reason, not a password)


class RecoveryError(Exception):
    """A link, code or step that does not work (one answer, whatever is wrong)."""


class OtherBrowserError(Exception):
    """The link works only in the browser (session) that asked for it."""


class LockedError(Exception):
    """Too many attempts: wait, or (identity checks) contact support."""


class RefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclass(frozen=True)
class Status:
    """Where an account's open request stands (None fields: no such step yet)."""

    request_id: str
    kind: str
    state: str
    link_followed: bool
    wait_until: datetime | None
    ready: bool


# Hashing and tokens


def _hash(runtime: Runtime, purpose: str, secret: str) -> str:
    return runtime.keyring.lookup_hash(f"recovery-{purpose}", secret)


def _new_token(selector: str) -> str:
    return f"{selector}.{secrets.token_urlsafe(32)}"


def new_staff_code() -> str:
    """128 random bits, base32 in groups of four for typing: XXXX-XXXX-…"""
    raw = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=")
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def normalise_code(typed: str) -> str:
    return "".join(ch for ch in typed.upper() if ch.isalnum())


def _link(runtime: Runtime, path: str, token: str) -> str:
    return f"{runtime.settings.issuer.rstrip('/')}{path}?token={token}"


def _forgot(runtime: Runtime) -> str:
    return runtime.settings.issuer.rstrip("/") + notices.FORGOT_PASSWORD_PATH


def _wait(runtime: Runtime) -> timedelta:
    return timedelta(hours=runtime.settings.recovery_wait_hours)


def _actor(account_id: str) -> str:
    return f"account:{account_id}"


# Limits


def _limits(
    runtime: Runtime, account_id: str | None, client_host: str | None
) -> list[throttle.Limit]:
    found = [throttle.address_limit(runtime.keyring, client_host, throttle.RECOVERY_ADDRESS)]
    if account_id is not None:
        policy = throttle.RECOVERY_ACCOUNT
        found.append(throttle.Limit(policy, f"{policy.prefix}:{account_id}"))
    return found


def _admit(db: Session, runtime: Runtime, limits: list[throttle.Limit]) -> bool:
    return throttle.store_for(runtime.settings).attempt(db, limits, throttle.utcnow()) is not None


def _mail_budget(db: Session, runtime: Runtime, account_id: str) -> bool:
    """Count one e-mail to the account's verified address against the budget every
    identity e-mail shares (``throttle.EMAIL_TO``); False if it is spent (nothing counted)."""
    address = notices.verified_address(db, runtime, account_id)
    if address is None:
        return False
    policy = throttle.EMAIL_TO
    limit = throttle.Limit(
        policy, f"{policy.prefix}:{accounts.login_hash(runtime.keyring, address)}"
    )
    counted = throttle.store_for(runtime.settings).attempt_gated(
        db, [limit], throttle.utcnow(), {limit.key: runtime.settings.emails_per_address_per_hour}
    )
    return not isinstance(counted, throttle.Refused)


# Eligibility


def refusal(db: Session, runtime: Runtime, account_id: str, *, kind: str) -> Refusal | None:
    """Why the account may not recover this way now (None: it may)."""
    if notices.verified_address(db, runtime, account_id) is None:
        return Refusal.NO_ADDRESS
    if kind == "self" and db.get(PatientLink, account_id) is None:
        return Refusal.NO_ROSTER
    now = throttle.utcnow()
    if any(now - moment < RECENT_CHANGE for moment in _last_changes(db, account_id)):
        return Refusal.RECENT_CHANGE
    return None


def _password_refusal(session: AuthSession) -> Refusal | None:
    """Every step a session drives needs one that proved the password: a social sign-in
    can be the very mailbox the link and the codes go to (docs/threat-model.md)."""
    return None if sessions.proved_password(session) else Refusal.PASSWORD_SIGN_IN


def _refuse_without_password(
    runtime: Runtime, session: AuthSession, *, action: str, request_id: str | None
) -> None:
    """Raise RefusedError (audited) if ``session`` did not prove the password."""
    why = _password_refusal(session)
    if why is None:
        return
    actor = _actor(session.account_id)
    with transaction(runtime.sessions) as db:
        audit.append(
            db,
            actor=actor,
            action=action,
            outcome=Outcome.FAILED,
            target=f"{actor} {why}",
            request_id=request_id,
        )
    raise RefusedError(why)


def _last_changes(db: Session, account_id: str) -> list[datetime]:
    """When the account's password was last reset and its address last changed."""
    identifier = db.get(LoginIdentifier, account_id)
    # As identity.flows.reset.last_password_reset_at reads it (not imported: a cycle).
    reset_at = db.scalar(
        select(func.max(PasswordReset.used_at)).where(
            PasswordReset.account_id == account_id, PasswordReset.used_at.is_not(None)
        )
    )
    changed_at = identifier.changed_at if identifier is not None else None
    return [moment for moment in (reset_at, changed_at) if moment is not None]


def _open(db: Session, account_id: str) -> RecoveryRequest | None:
    return db.scalars(
        select(RecoveryRequest)
        .where(RecoveryRequest.account_id == account_id, RecoveryRequest.state.in_(OPEN))
        .order_by(RecoveryRequest.created_at.desc())
        .limit(1)
        .with_for_update()
    ).first()


def _end_password_only_sessions(db: Session, lock: sessions.AccountLock) -> None:
    """A request stopped by "this wasn't me" or by the second factor: whoever else knows
    the password loses the sessions it gave them (two-factor sessions stay)."""
    db.execute(
        delete(AuthSession).where(
            AuthSession.account_id == lock.account_id,
            AuthSession.level < sessions.SECOND_FACTOR,
        )
    )


def _end(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    row: RecoveryRequest,
    *,
    state: str,
    reason: str,
    actor: str,
    request_id: str | None,
) -> None:
    was_waiting = row.state == WAITING
    row.state = state
    row.ended_at = throttle.utcnow()
    row.end_reason = reason
    row.link_hash = None
    row.cancel_hash = None
    if state == CANCELLED and was_waiting:
        _notice(db, runtime, sender, row.account_id, "recovery_cancelled")
    audit.append(
        db,
        actor=actor,
        action=f"identity.recovery.{state}",
        outcome=Outcome.ALLOWED,
        target=f"{_actor(row.account_id)} recovery:{row.id} {reason}",
        request_id=request_id,
    )


def _notice(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    account_id: str,
    template: str,
    *,
    link: str | None = None,
    hours: int | None = None,
) -> bool:
    address = notices.verified_address(db, runtime, account_id)
    if address is None:
        return False
    email = emails.Email(template, link=link or _forgot(runtime), hours=hours)
    emails.send(db, sender, runtime.settings, to=address, email=email)
    return True


def _text(db: Session, texts: SecurityNoticeTexter, account_id: str, link: str) -> None:
    """The same notice by SMS, to the patient's verified number if it has one (a second
    sign-in method the person who asked may not hold): a generic sentence and ``link``."""
    linked = db.get(PatientLink, account_id)
    if linked is not None:
        texts.send_security_notice(db, patient_id=linked.patient_id, link=link)


def status(runtime: Runtime, account_id: str) -> Status | None:
    with runtime.sessions() as db:
        row = db.scalars(
            select(RecoveryRequest)
            .where(RecoveryRequest.account_id == account_id, RecoveryRequest.state.in_(OPEN))
            .order_by(RecoveryRequest.created_at.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        now = throttle.utcnow()
        return Status(
            request_id=row.id,
            kind=row.kind,
            state=row.state,
            link_followed=row.link_used_at is not None,
            wait_until=row.wait_until,
            ready=row.state == WAITING and row.wait_until is not None and row.wait_until <= now,
        )


# Self-service


def start(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    *,
    client_host: str | None,
    request_id: str | None,
) -> None:
    """E-mail a link to the verified address, bound to ``session``; RefusedError or
    LockedError otherwise. A new request replaces the account's open self-service one
    that has not started its wait (a waiting one stays: cancel it with its link; so does a
    staff one, whose code the password alone must not void)."""
    account_id = session.account_id
    now = throttle.utcnow()
    why: Refusal | None = None
    with transaction(runtime.sessions) as db:
        if not _admit(db, runtime, _limits(runtime, account_id, client_host)):
            locked = True
        else:
            locked = False
            why = _password_refusal(session) or refusal(db, runtime, account_id, kind="self")
            open_row = _open(db, account_id)
            # A waiting request, or support's code, is not replaced from here: the
            # password alone must not undo either.
            fresh = why is None and (
                open_row is None or (open_row.state != WAITING and open_row.kind == "self")
            )
            if fresh and not _mail_budget(db, runtime, account_id):
                locked = True  # the address had its e-mails for this hour
            elif fresh:
                if open_row is not None:
                    _end(
                        db,
                        runtime,
                        sender,
                        open_row,
                        state=CANCELLED,
                        reason="replaced",
                        actor=_actor(account_id),
                        request_id=request_id,
                    )
                selector = new_id(_SELECTOR)
                token = _new_token(selector)
                db.add(
                    RecoveryRequest(
                        id=selector,
                        account_id=account_id,
                        kind="self",
                        state=STARTED,
                        session_handle=session.handle,
                        link_hash=_hash(runtime, "link", token),
                        link_expires_at=now + LINK_VALID_FOR,
                        created_at=now,
                    )
                )
                db.flush()
                _notice(
                    db,
                    runtime,
                    sender,
                    account_id,
                    "recovery_link",
                    link=_link(runtime, LINK_PATH, token),
                )
            audit.append(
                db,
                actor=_actor(account_id),
                action="identity.recovery.start",
                outcome=(
                    Outcome.DENIED if locked else Outcome.ALLOWED if why is None else Outcome.FAILED
                ),
                target=_actor(account_id) if why is None else f"{_actor(account_id)} {why}",
                request_id=request_id,
            )
    if locked:
        raise LockedError
    if why is not None:
        raise RefusedError(why)


def open_link(
    runtime: Runtime,
    session: AuthSession | None,
    token: str,
    *,
    client_host: str | None,
    request_id: str | None,
) -> None:
    """Follow the e-mailed link in the session that asked for it. RecoveryError (unknown,
    malformed, expired, used), OtherBrowserError (a real link, another browser: nothing
    happens), LockedError."""
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        if not _admit(db, runtime, _limits(runtime, None, client_host)):
            raise LockedError
        row = (
            db.get(RecoveryRequest, token.partition(".")[0], with_for_update=True)
            if _TOKEN.fullmatch(token)
            else None
        )
        works = (
            row is not None
            and row.kind == "self"
            and row.state == STARTED
            and row.link_hash is not None
            and hmac.compare_digest(row.link_hash, _hash(runtime, "link", token))
            and row.link_expires_at is not None
            and row.link_expires_at > now
            and row.link_used_at is None
        )
        other = works and (
            session is None
            or row is None
            or session.handle != row.session_handle
            or session.account_id != row.account_id
        )
        target = f"{_actor(row.account_id)} recovery:{row.id}" if row is not None else "recovery"
        outcome = Outcome.ALLOWED if works and not other else Outcome.FAILED
        if outcome is Outcome.ALLOWED and row is not None:
            row.link_used_at = now
            row.link_hash = None
        audit.append(
            db,
            actor=_actor(session.account_id) if session is not None else "anonymous",
            action="identity.recovery.link",
            outcome=outcome,
            target=target + (" other-browser" if other else ""),
            request_id=request_id,
        )
    if other:
        raise OtherBrowserError
    if not works:
        raise RecoveryError


def _start_wait(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    texts: SecurityNoticeTexter,
    row: RecoveryRequest,
    *,
    request_id: str | None,
) -> datetime:
    now = throttle.utcnow()
    cancel_token = _new_token(row.id)
    row.state = WAITING
    row.proved_at = now
    row.wait_until = now + _wait(runtime)
    row.link_hash = None
    row.cancel_hash = _hash(runtime, "cancel", cancel_token)
    cancel_link = _link(runtime, CANCEL_PATH, cancel_token)
    _notice(
        db,
        runtime,
        sender,
        row.account_id,
        "recovery_started",
        link=cancel_link,
        hours=runtime.settings.recovery_wait_hours,
    )
    _text(db, texts, row.account_id, cancel_link)
    audit.append(
        db,
        actor=_actor(row.account_id),
        action="identity.recovery.waiting",
        outcome=Outcome.ALLOWED,
        target=f"{_actor(row.account_id)} recovery:{row.id}",
        request_id=request_id,
    )
    return row.wait_until


@dataclass(frozen=True)
class _Keys:
    account: throttle.Limit
    shared: list[throttle.Limit]


def _limit(policy: throttle.Policy, value: str) -> throttle.Limit:
    return throttle.Limit(policy, f"{policy.prefix}:{value}")


def prove_identity(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    dob: date,
    ssn4: str,
    *,
    texts: SecurityNoticeTexter,
    client_host: str | None,
    request_id: str | None,
) -> datetime:
    """Date of birth and SSN last 4 against the account's own roster record, after its
    link was followed in this session; returns when the wait ends. Counted by the
    roster's policies (account, address, record, DOB); RecoveryError (no such step, or
    a mismatch), LockedError (the account's verification is locked: contact support)."""
    account_id = session.account_id
    hashes = RosterHashes(runtime.keyring)
    identity = hashes.identity(dob, ssn4)
    # The roster's own counters, as identity.flows.verify counts them: the account (5
    # failures lock it until staff review), the client address, the record, the DOB.
    keys = _Keys(
        account=_limit(throttle.VERIFY_ACCOUNT, account_id),
        shared=[
            throttle.address_limit(runtime.keyring, client_host, throttle.VERIFY_ADDRESS),
            _limit(throttle.VERIFY_RECORD, identity),
            _limit(throttle.VERIFY_DOB, hashes.dob(dob)),
        ],
    )
    store = throttle.store_for(runtime.settings)
    actor = _actor(account_id)
    with transaction(runtime.sessions) as db:
        row = _open(db, account_id)
        ready = (
            row is not None
            and row.kind == "self"
            and row.state == STARTED
            and row.link_used_at is not None
            and row.session_handle == session.handle
            and sessions.proved_password(session)  # as it was at start(): same handle
        )
        if not ready:
            raise RecoveryError
        counted = store.attempt(db, [keys.account, *keys.shared], throttle.utcnow())
        if counted is None:
            audit.append(
                db,
                actor=actor,
                action="identity.recovery.identity",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
    if counted is None:
        raise LockedError
    with transaction(runtime.sessions) as db:
        linked = db.get(PatientLink, account_id)
        match = False
        if linked is not None:
            member = db.scalars(
                select(RosterMember).where(RosterMember.patient_id == linked.patient_id)
            ).first()
            match = (
                member is not None
                and member.eligible
                and hmac.compare_digest(member.identity_hash, identity)
            )
        row = _open(db, account_id)
        if match and row is not None and row.state == STARTED:
            throttle.settle(
                store, db, reset=[keys.account], refund=keys.shared, now=throttle.utcnow()
            )
            audit.append(
                db,
                actor=actor,
                action="identity.recovery.identity",
                outcome=Outcome.ALLOWED,
                target=f"{actor} recovery:{row.id}",
                request_id=request_id,
            )
            return _start_wait(db, runtime, sender, texts, row, request_id=request_id)
        audit.append(
            db,
            actor=actor,
            action="identity.recovery.identity",
            outcome=Outcome.FAILED,
            target=actor,
            request_id=request_id,
        )
        if keys.account.policy.hard_locked(counted.get(keys.account.key, 0)):
            audit.append(
                db,
                actor=actor,
                action="identity.verify.lock",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
    raise RecoveryError


# Staff-assisted


def start_staff(
    runtime: Runtime,
    sender: EmailSender,
    account_id: str,
    *,
    evidence: str,
    reason: str,
    operator: str,
    request_id: str | None = None,
) -> str:
    """Start a staff-assisted recovery: the code goes to the verified address only, and
    exists nowhere else (not returned). Returns the request's ID. RefusedError (no
    verified address, a recent reset or e-mail change); staff.StaffError (no evidence or
    reason)."""
    reason = staff.check_reason(reason)
    evidence = " ".join(evidence.split())
    if not evidence:
        raise staff.StaffError("--evidence must say what was checked")
    if len(evidence) > MAX_EVIDENCE:
        raise staff.StaffError(f"--evidence is at most {MAX_EVIDENCE} characters")
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        if db.get(Account, account_id) is None:
            raise staff.NotFoundError("no account has this ID")
        why = refusal(db, runtime, account_id, kind="staff")
        if why is not None:
            audit.append(
                db,
                actor=operator,
                action="identity.recovery.staff_start",
                outcome=Outcome.FAILED,
                target=f"{_actor(account_id)} {why}",
                request_id=request_id,
            )
        else:
            open_row = _open(db, account_id)
            if open_row is not None:
                _end(
                    db,
                    runtime,
                    sender,
                    open_row,
                    state=CANCELLED,
                    reason="replaced",
                    actor=operator,
                    request_id=request_id,
                )
            code = new_staff_code()
            row = RecoveryRequest(
                id=new_id(_SELECTOR),
                account_id=account_id,
                kind="staff",
                state=STARTED,
                link_hash=_hash(runtime, "code", normalise_code(code)),
                link_expires_at=now + STAFF_CODE_VALID_FOR,
                created_at=now,
                operator=operator,
                evidence=evidence,
                reason=reason,
            )
            db.add(row)
            db.flush()
            emails.send(
                db,
                sender,
                runtime.settings,
                to=notices.verified_address(db, runtime, account_id) or "",
                email=emails.Email(
                    "recovery_code",
                    code=code,
                    hours=int(STAFF_CODE_VALID_FOR.total_seconds() // 3600),
                ),
            )
            del code
            staff.record(
                db,
                actor=operator,
                action="identity.recovery.staff_start",
                reason=reason,
                account_id=account_id,
            )
            audit.append(
                db,
                actor=operator,
                action="identity.recovery.staff_start",
                outcome=Outcome.ALLOWED,
                target=f"{_actor(account_id)} recovery:{row.id}",
                request_id=request_id,
            )
            request_row_id = row.id
    if why is not None:
        raise RefusedError(why)
    return request_row_id


def enter_code(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    typed: str,
    *,
    texts: SecurityNoticeTexter,
    client_host: str | None,
    request_id: str | None,
) -> datetime:
    """The code from support, at the second step: starts the wait. RecoveryError (wrong,
    expired, used, none), LockedError, RefusedError (not a password sign-in)."""
    account_id = session.account_id
    _refuse_without_password(
        runtime, session, action="identity.recovery.code", request_id=request_id
    )
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        if not _admit(db, runtime, _limits(runtime, account_id, client_host)):
            raise LockedError
    with transaction(runtime.sessions) as db:
        row = _open(db, account_id)
        works = (
            row is not None
            and row.kind == "staff"
            and row.state == STARTED
            and row.link_hash is not None
            and row.link_expires_at is not None
            and row.link_expires_at > now
            and hmac.compare_digest(row.link_hash, _hash(runtime, "code", normalise_code(typed)))
        )
        if works and row is not None:
            row.link_used_at = now
            throttle.store_for(runtime.settings).reset(
                db, _limits(runtime, account_id, client_host)[1]
            )
            return _start_wait(db, runtime, sender, texts, row, request_id=request_id)
        audit.append(
            db,
            actor=_actor(account_id),
            action="identity.recovery.code",
            outcome=Outcome.FAILED,
            target=_actor(account_id),
            request_id=request_id,
        )
    raise RecoveryError


# Ending a request


def cancel_by_link(
    runtime: Runtime,
    sender: EmailSender,
    token: str,
    *,
    client_host: str | None,
    request_id: str | None,
) -> None:
    """ "This wasn't me": the cancel link stops the request (RecoveryError if it does not
    work: unknown, malformed, or the request already ended)."""
    selector = token.partition(".")[0] if _TOKEN.fullmatch(token) else None
    with transaction(runtime.sessions) as db:
        if not _admit(db, runtime, _limits(runtime, None, client_host)):
            raise LockedError
        # Whose request, read unlocked; then the account's session lock (it ends
        # sessions), and only then the request's row, locked: the lock's order.
        account_id = (
            db.scalar(select(RecoveryRequest.account_id).where(RecoveryRequest.id == selector))
            if selector is not None
            else None
        )
        lock = sessions.lock_account_sessions(db, account_id) if account_id else None
        row = (
            db.get(RecoveryRequest, selector, with_for_update=True)
            if selector is not None and lock is not None
            else None
        )
        works = (
            row is not None
            and row.state in OPEN
            and row.cancel_hash is not None
            and hmac.compare_digest(row.cancel_hash, _hash(runtime, "cancel", token))
        )
        if works and row is not None and lock is not None:
            _end(
                db,
                runtime,
                sender,
                row,
                state=CANCELLED,
                reason="not_me",
                actor="anonymous",
                request_id=request_id,
            )
            _end_password_only_sessions(db, lock)
        else:
            audit.append(
                db,
                actor="anonymous",
                action="identity.recovery.cancel",
                outcome=Outcome.FAILED,
                target=f"{_actor(row.account_id)} recovery:{row.id}" if row else "recovery",
                request_id=request_id,
            )
    if not works:
        raise RecoveryError


def cancel_on_sign_in(
    db: Session,
    runtime: Runtime,
    sender: EmailSender | None,
    lock: sessions.AccountLock,
    *,
    request_id: str | None,
) -> None:
    """A completed two-factor sign-in proves the factor is not lost: every open request
    of the locked account ends (in the caller's transaction), with a notice if one was
    waiting."""
    end_open(db, runtime, sender, lock, reason="signed_in", request_id=request_id)


def end_open(
    db: Session,
    runtime: Runtime,
    sender: EmailSender | None,
    lock: sessions.AccountLock,
    *,
    reason: str,
    request_id: str | None,
) -> None:
    """End every open request of the locked account in the caller's transaction (a notice
    for each that was waiting, when ``sender`` is given): the owner showed up."""
    account_id = lock.account_id
    rows = db.scalars(
        select(RecoveryRequest)
        .where(RecoveryRequest.account_id == account_id, RecoveryRequest.state.in_(OPEN))
        .with_for_update()
    ).all()
    for row in rows:
        if sender is None:
            row.state = CANCELLED
            row.ended_at = throttle.utcnow()
            row.end_reason = reason
            continue
        _end(
            db,
            runtime,
            sender,
            row,
            state=CANCELLED,
            reason=reason,
            actor=_actor(account_id),
            request_id=request_id,
        )
    if rows:
        _end_password_only_sessions(db, lock)


def complete(
    runtime: Runtime,
    sender: EmailSender,
    session: AuthSession,
    *,
    texts: SecurityNoticeTexter,
    request_id: str | None,
) -> None:
    """After the wait, at the second step: the old authenticator and recovery codes go,
    every other session and app grant ends, the session stays (at level 1: the next step
    is enrolling a new authenticator, which shows new recovery codes). RecoveryError if no
    request of the account has waited its time; RefusedError if the session did not
    prove the password (whoever finishes enrols the new authenticator)."""
    account_id = session.account_id
    _refuse_without_password(
        runtime, session, action="identity.recovery.complete", request_id=request_id
    )
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        # It ends the other sessions: the session lock first (identity.sessions).
        lock = sessions.lock_account_sessions(db, account_id)
        row = _open(db, account_id)
        ready = (
            lock is not None
            and row is not None
            and row.state == WAITING
            and row.wait_until is not None
            and row.wait_until <= now
            and db.get(AuthSession, session.token_hash) is not None
        )
        # A password reset or an e-mail change during the wait (or the address no longer
        # verified): ended, not completed; the reset may be the owner taking it back.
        # Since the request began, too: the wait may be longer than RECENT_CHANGE.
        stopped = (
            ready
            and row is not None
            and (
                refusal(db, runtime, account_id, kind="staff") is not None
                or any(moment >= row.created_at for moment in _last_changes(db, account_id))
            )
        )
        if row is not None and stopped:
            _end(
                db,
                runtime,
                sender,
                row,
                state=CANCELLED,
                reason="recent_change",
                actor=_actor(account_id),
                request_id=request_id,
            )
        elif row is not None and lock is not None and ready:
            totp.remove(db, account_id)
            recovery_codes.remove_all(db, account_id)
            sessions.revoke_all(db, lock, keep=session)
            backchannel.queue(db, account_id)
            withdrawals.end_grants(db, account_id)
            _end(
                db,
                runtime,
                sender,
                row,
                state=COMPLETED,
                reason="enrol",
                actor=_actor(account_id),
                request_id=request_id,
            )
            _notice(db, runtime, sender, account_id, "recovery_completed")
            _text(db, texts, account_id, _forgot(runtime))
    if stopped or not ready:
        raise RecoveryError
