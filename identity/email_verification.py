"""Proving someone reads an e-mail address: a link and a short code, sent together.

- **The link** carries a token of 256 bits (``secrets.token_urlsafe(32)``): opened in any
  browser, it verifies the address and signs nobody in.
- **The code** is 8 characters from Crockford's base32 alphabet (no I, L, O or U, so
  nothing reads as something else; typing is forgiving like recovery codes: case, spaces
  and dashes do not matter, O, I, L read as 0, 1, 1): 40 random bits, shown as
  XXXX-XXXX. It works only in the browser (or API client) holding the pending state the
  request that sent it set up, and only 5 times wrong before the whole verification is
  void; codes are also throttled per account and per client address. Short enough to
  type from a phone, long enough that 5 guesses per e-mail, and at most a few e-mails an
  hour, leave a chance below one in 10^10.
- Both are stored only as keyed hashes (the keyring's lookup hash, as for session
  tokens and recovery codes); the code's hash is bound to its verification's ID. Each
  verification works once (a conditional ``UPDATE … WHERE used_at IS NULL``), lasts
  ``CAREBRIDGE_EMAIL_VERIFICATION_HOURS`` (24), and a new one for an account ends its
  older ones.
- **At most a few e-mails an hour to one address**
  (``CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR``, 3): every e-mail this module sends (a
  verification or a "someone tried to sign up with your address" notice) counts under
  the address's lookup hash; past the limit nothing is sent and no new verification is
  made (so a flood cannot void the code already in the owner's inbox), while whoever
  asked gets the same answer as before.

The flows using it: sign-up (identity/flows/signup.py), a password sign-in of an account
whose address is not verified yet (identity/flows/signin.py), adding an address to an
account without one, and the pages and API that take the code or the link
(identity/flows/email_verification.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection
from starlette.responses import Response

from carebridge.http import cookies
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from identity import accounts, emails, throttle
from identity.credentials import recovery
from identity.interfaces import EmailSender
from identity.models import EmailVerification, LoginIdentifier, PasswordCredential, new_id

CODE_LENGTH = 8
MAX_CODE_FAILURES = 5
SIGNUP = "signup"  # a new account's address
SIGNIN = "signin"  # an account from before verification, at its next password sign-in
ADD = "add"  # an address added to an account that had none (upstream sign-in only)
CHANGE = "change"  # a new address replacing the account's (identity/email_change.py)
# The purposes whose row carries the address being proved (not yet the account's login).
_CARRIES_ADDRESS = (ADD, CHANGE)

# The throttles' policies live with the others (identity/throttle.py), where purge
# knows them.
EMAIL_TO = throttle.EMAIL_TO
CODE_ACCOUNT = throttle.EMAIL_CODE_ACCOUNT
CODE_ADDRESS = throttle.EMAIL_CODE_ADDRESS


def account_limit(account_id: str) -> throttle.Limit:
    return throttle.Limit(CODE_ACCOUNT, f"{CODE_ACCOUNT.prefix}:{account_id}")


def email_limit(address_hash: str) -> throttle.Limit:
    return throttle.Limit(EMAIL_TO, f"{EMAIL_TO.prefix}:{address_hash}")


def new_code() -> str:
    return "".join(secrets.choice(recovery.ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(typed: str) -> str:
    return recovery.normalise(typed[:64])


def grouped(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def token_hash(runtime: Runtime, token: str) -> str:
    return runtime.keyring.lookup_hash("email-verification-link", token)


def browser_hash(runtime: Runtime, pending_token: str) -> str:
    return runtime.keyring.lookup_hash("email-verification-pending", pending_token)


def code_hash(runtime: Runtime, verification_id: str, code: str) -> str:
    return runtime.keyring.lookup_hash("email-verification-code", f"{verification_id}:{code}")


def new_pending_token() -> str:
    """What the browser (a cookie) or API client that asked holds until the code comes."""
    return secrets.token_urlsafe(32)


def may_email(db: Session, runtime: Runtime, address_hash: str) -> bool:
    """Count one e-mail to this address; False past the hourly limit (send nothing)."""
    store = throttle.store_for(runtime.settings)
    limit = email_limit(address_hash)
    counts = store.attempt(db, [limit], throttle.utcnow())
    sent = (counts or {}).get(limit.key, 0)
    return counts is not None and sent <= runtime.settings.emails_per_address_per_hour


def confirm_link(runtime: Runtime, path: str = "/email/confirm") -> str:
    return f"{runtime.settings.issuer.rstrip('/')}{path}"


def issue(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    *,
    account_id: str,
    purpose: str,
    to: str,
    pending_token: str | None,
    template: str = "verify_email",
    link_path: str = "/email/confirm",
    password_hash: str | None = None,
) -> str | None:
    """Send a verification for ``to`` (a normalised address) to the account, in ``db``'s
    transaction; returns its ID, or None when the address has had its e-mails for the
    hour (then nothing is sent or made: the latest verification stays usable, for
    ``signup``/``signin`` now in the browser holding ``pending_token``).

    ``pending_token``: the browser binding for ``signup``/``signin``, the session's for
    ``change``; None for ``add``, bound to the account. ``add`` and ``change`` rows carry
    their address (not yet the account's login). ``template`` and ``link_path``: the
    e-mail and the page its link opens. ``password_hash``: ``signup``'s password, set on
    the account only once verified.
    """
    address_hash = accounts.login_hash(runtime.keyring, to)
    now = throttle.utcnow()
    if not may_email(db, runtime, address_hash):
        if pending_token and purpose in (SIGNUP, SIGNIN) and password_hash is None:
            # Nothing new is sent: the code already in the inbox finishes in the browser
            # that asked last (which got this far with the right password). Not for a
            # sign-up: anyone may send one, and the code must not finish it with
            # another sign-up's password.
            latest = db.scalar(
                select(EmailVerification)
                .where(
                    EmailVerification.account_id == account_id,
                    EmailVerification.browser_hash.is_not(None),
                    EmailVerification.purpose.in_((SIGNUP, SIGNIN)),
                )
                .order_by(EmailVerification.created_at.desc())
                .limit(1)
            )
            if usable(latest, now) and latest is not None:
                latest.browser_hash = browser_hash(runtime, pending_token)
        return None
    db.execute(
        update(EmailVerification)
        .where(
            EmailVerification.account_id == account_id,
            EmailVerification.used_at.is_(None),
            EmailVerification.expires_at > now,
        )
        .values(expires_at=now)
    )
    token, code = secrets.token_urlsafe(32), new_code()
    verification_id = new_id("ev")
    db.add(
        EmailVerification(
            id=verification_id,
            account_id=account_id,
            purpose=purpose,
            token_hash=token_hash(runtime, token),
            code_hash=code_hash(runtime, verification_id, code),
            browser_hash=browser_hash(runtime, pending_token) if pending_token else None,
            address_hash=address_hash if purpose in _CARRIES_ADDRESS else None,
            address_encrypted=(
                runtime.keyring.encrypt(to.encode("utf-8"), associated_data("login", account_id))
                if purpose in _CARRIES_ADDRESS
                else None
            ),
            password_hash=password_hash,
            created_at=now,
            expires_at=now + timedelta(hours=runtime.settings.email_verification_hours),
            used_at=None,
            failures=0,
        )
    )
    db.flush()
    emails.send(
        db,
        sender,
        runtime.settings,
        to=to,
        email=emails.Email(
            template,
            link=f"{confirm_link(runtime, link_path)}?token={token}",
            code=grouped(code),
            hours=runtime.settings.email_verification_hours,
        ),
    )
    return verification_id


def notify_taken(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    *,
    to: str,
    template: str = "signup_attempted",
) -> bool:
    """Tell an address's owner someone tried to sign up with it, or (``template``) to
    make it another account's address (within the hourly limit)."""
    if not may_email(db, runtime, accounts.login_hash(runtime.keyring, to)):
        return False
    emails.send(
        db,
        sender,
        runtime.settings,
        to=to,
        email=emails.Email(template, link=confirm_link(runtime, "/signin")),
    )
    return True


def usable(row: EmailVerification | None, now: datetime) -> bool:
    return (
        row is not None
        and row.used_at is None
        and row.failures < MAX_CODE_FAILURES
        and row.expires_at > now
    )


def count_failure(db: Session, row: EmailVerification) -> bool:
    """One more wrong code for ``row``; True if this one voided it."""
    db.execute(
        update(EmailVerification)
        .where(EmailVerification.id == row.id, EmailVerification.used_at.is_(None))
        .values(failures=EmailVerification.failures + 1)
    )
    db.refresh(row)
    return row.failures == MAX_CODE_FAILURES


def claim(db: Session, row: EmailVerification, now: datetime) -> bool:
    """Use ``row`` once: a conditional UPDATE, so two concurrent uses get one success."""
    result = db.execute(
        update(EmailVerification)
        .where(
            EmailVerification.id == row.id,
            EmailVerification.used_at.is_(None),
            EmailVerification.failures < MAX_CODE_FAILURES,
            EmailVerification.expires_at > now,
        )
        .values(used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_verified(db: Session, row: EmailVerification, now: datetime) -> bool:
    """What a used verification proves: the account's login is verified, or (``add``)
    the account gets the address as its verified login. False if that address has
    become another account's (or this account got one) meanwhile, and for ``change``
    (what that proves is identity/email_change.py's to apply)."""
    if row.purpose == CHANGE:
        return False
    if row.purpose != ADD:
        if row.password_hash is not None:
            # A sign-up's password: the account's now (one sign-up's, the latest's, as a
            # newer verification ended the older ones).
            db.execute(
                delete(PasswordCredential).where(PasswordCredential.account_id == row.account_id)
            )
            db.add(
                PasswordCredential(
                    account_id=row.account_id, hash=row.password_hash, changed_at=now
                )
            )
            db.flush()
        db.execute(
            update(LoginIdentifier)
            .where(
                LoginIdentifier.account_id == row.account_id,
                LoginIdentifier.verified_at.is_(None),
            )
            .values(verified_at=now)
        )
        return True
    if row.address_hash is None or row.address_encrypted is None:
        return False
    try:
        with db.begin_nested():
            db.add(
                LoginIdentifier(
                    account_id=row.account_id,
                    lookup_hash=row.address_hash,
                    encrypted=row.address_encrypted,
                    verified_at=now,
                )
            )
            db.flush()
    except IntegrityError:
        return False
    return True


def by_token(
    db: Session, runtime: Runtime, token: str, *, change: bool = False
) -> EmailVerification | None:
    """The verification a link's token names: of a change of address if ``change``, else
    of any other purpose (each link works only on its own page)."""
    purpose = EmailVerification.purpose == CHANGE if change else EmailVerification.purpose != CHANGE
    return db.scalar(
        select(EmailVerification).where(
            EmailVerification.token_hash == token_hash(runtime, token), purpose
        )
    )


def by_pending(db: Session, runtime: Runtime, pending_token: str) -> EmailVerification | None:
    """The latest verification the holder of ``pending_token`` asked for."""
    return db.scalar(
        select(EmailVerification)
        .where(
            EmailVerification.browser_hash == browser_hash(runtime, pending_token),
            EmailVerification.purpose != CHANGE,
        )
        .order_by(EmailVerification.created_at.desc())
        .limit(1)
    )


def latest_added(db: Session, account_id: str) -> EmailVerification | None:
    """The account's latest verification of an address it is adding."""
    return db.scalar(
        select(EmailVerification)
        .where(EmailVerification.account_id == account_id, EmailVerification.purpose == ADD)
        .order_by(EmailVerification.created_at.desc())
        .limit(1)
    )


def code_matches(runtime: Runtime, row: EmailVerification | None, typed: str) -> bool:
    """Constant-time comparison of the typed code with ``row``'s (False without a row)."""
    code = normalise_code(typed)
    if row is None:
        # The same work as a real comparison.
        secrets.compare_digest(code_hash(runtime, "none", code), "0" * 64)
        return False
    return secrets.compare_digest(row.code_hash, code_hash(runtime, row.id, code))


@dataclass(frozen=True)
class Pending:
    """A verification is on its way; the holder of ``token`` may type its code."""

    token: str


def is_verified(db: Session, account_id: str) -> bool:
    verified_at = db.scalar(
        select(LoginIdentifier.verified_at).where(LoginIdentifier.account_id == account_id)
    )
    return verified_at is not None


# The pending state in a browser: a cookie holding the pending token (the API hands the
# token to its client instead). It lasts as long as a verification.


def pending_cookie_name(runtime: Runtime) -> str:
    return cookies.EMAIL_PENDING.name(runtime.settings.issuer_is_https)


def set_pending_cookie(response: Response, runtime: Runtime, token: str) -> None:
    response.set_cookie(
        pending_cookie_name(runtime),
        token,
        max_age=runtime.settings.email_verification_hours * 3600,
        path="/",
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )


def clear_pending_cookie(response: Response, runtime: Runtime) -> None:
    response.delete_cookie(
        pending_cookie_name(runtime),
        path="/",
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )


def presented_pending(connection: HTTPConnection) -> str | None:
    runtime: Runtime = connection.app.state.runtime
    return connection.cookies.get(pending_cookie_name(runtime)) or None
