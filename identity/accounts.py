"""Accounts, and the login identifier people type to sign in with a password (an email).

The identifier is never stored as typed. It is normalised (Unicode NFKC, surrounding
whitespace stripped, case-folded) and kept twice: a keyed lookup hash
(``keyring.lookup_hash("login", ...)``) to find the account, and the text encrypted under
the keyring, bound to its account ID, to show it back to its owner.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from carebridge.i18n import N_
from carebridge.keyring import Keyring, associated_data
from carebridge.settings import is_one_address
from identity.models import Account, LoginIdentifier, PasswordCredential, TotpCredential, new_id

MAX_LOGIN_LENGTH = 254  # RFC 5321's path limit, less the angle brackets
ACTIVE = "active"
DISABLED = "disabled"

ENTER_LOGIN = N_("Enter your email address.")
LOGIN_TOO_LONG = f"Your email address must be at most {MAX_LOGIN_LENGTH} characters long."
LOGIN_FORMAT = N_("Enter an email address in the right format, like name@example.org.")


def normalise_login(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()


def login_problem(login: str) -> str | None:
    """Why a normalised login is not an email address we accept; None if it is.

    A shape check only (something@domain.tld, no spaces or control characters): whether
    mail reaches it is what e-mail verification proves (identity/email_verification.py).
    """
    if not login:
        return ENTER_LOGIN
    if len(login) > MAX_LOGIN_LENGTH:
        return LOGIN_TOO_LONG
    local, _, domain = login.rpartition("@")
    labels = domain.split(".")
    if (
        not local
        or len(local) > 64
        or len(labels) < 2
        or not all(labels)
        or any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in login)
        # What the e-mail sender accepts as one recipient ("a,b@x.org" is two).
        or not is_one_address(login)
    ):
        return LOGIN_FORMAT
    return None


def login_hash(keyring: Keyring, login: str) -> str:
    return keyring.lookup_hash("login", login)


@dataclass(frozen=True)
class PasswordAccount:
    """What password sign-in needs to know about an account."""

    account_id: str
    status: str
    password_hash: str | None
    # A confirmed TOTP authenticator: sign-in's next step is its challenge. Read here, in
    # the query sign-in makes anyway, to save a round trip per sign-in.
    has_second_factor: bool = False
    # The login address was proved to be read (an e-mail link or code); an account
    # without it is asked to verify at sign-in (identity/email_verification.py).
    verified: bool = True
    # When the password was last set (a re-hash of the same password keeps it): sign-in
    # starts a session only if it is still this once the password has been checked.
    password_changed_at: datetime | None = None


_BY_LOGIN = (
    select(
        Account.id,
        Account.status,
        PasswordCredential.hash,
        TotpCredential.confirmed_at,
        LoginIdentifier.verified_at,
        PasswordCredential.changed_at,
    )
    .join(LoginIdentifier, LoginIdentifier.account_id == Account.id)
    .outerjoin(PasswordCredential, PasswordCredential.account_id == Account.id)
    .outerjoin(TotpCredential, TotpCredential.account_id == Account.id)
    .where(LoginIdentifier.lookup_hash == bindparam("lookup_hash"))
)


def find_by_login(db: Session, keyring: Keyring, login: str) -> PasswordAccount | None:
    """The account a normalised login identifies, with its password hash, or None."""
    row = db.execute(_BY_LOGIN, {"lookup_hash": login_hash(keyring, login)}).first()
    if row is None:
        return None
    return PasswordAccount(
        account_id=row[0],
        status=row[1],
        password_hash=row[2],
        has_second_factor=row[3] is not None,
        verified=row[4] is not None,
        password_changed_at=row[5],
    )


def create(
    db: Session,
    keyring: Keyring,
    *,
    login: str,
    password_hash: str | None,
    verified_at: datetime | None = None,
) -> str:
    """A new active account with its login and password, in the caller's transaction
    (sign-up's has no password until its address is verified: ``password_hash`` None).

    The login is unverified unless ``verified_at`` says when it was proved (sign-up sends
    a verification; operators' and the demo's accounts may be created verified).

    Flushes, so a login taken a moment ago by another transaction raises IntegrityError
    here (the lookup hash is unique).
    """
    now = datetime.now(UTC)
    account_id = new_id("acc")
    db.add(Account(id=account_id, created_at=now, status=ACTIVE))
    db.flush()
    db.add(
        LoginIdentifier(
            account_id=account_id,
            lookup_hash=login_hash(keyring, login),
            encrypted=keyring.encrypt(login.encode("utf-8"), associated_data("login", account_id)),
            verified_at=verified_at,
        )
    )
    if password_hash is not None:
        db.add(PasswordCredential(account_id=account_id, hash=password_hash, changed_at=now))
    db.flush()
    return account_id


def login_of(db: Session, keyring: Keyring, account_id: str) -> str | None:
    """The account's login identifier, decrypted, to show to its owner."""
    encrypted = db.scalar(
        select(LoginIdentifier.encrypted).where(LoginIdentifier.account_id == account_id)
    )
    if encrypted is None:
        return None
    return keyring.decrypt(encrypted, associated_data("login", account_id)).decode("utf-8")


def verified_login_of(db: Session, keyring: Keyring, account_id: str) -> str | None:
    """The account's sign-in address if its owner verified it (an unverified address may
    be someone else's), else None: where another package may e-mail the account."""
    verified = db.scalar(
        select(LoginIdentifier.verified_at).where(LoginIdentifier.account_id == account_id)
    )
    return None if verified is None else login_of(db, keyring, account_id)


def replace_password_hash(db: Session, account_id: str, *, old: str, new: str) -> bool:
    """Store a re-hash of the same password (new Argon2 parameters).

    Conditional on the old hash, so it never overwrites a password changed meanwhile.
    """
    result = db.execute(
        update(PasswordCredential)
        .where(PasswordCredential.account_id == account_id, PasswordCredential.hash == old)
        .values(hash=new)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def password_unchanged(
    db: Session, account_id: str, changed_at: datetime | None, *, rehash: bool
) -> bool:
    """Whether the account's password is still the one set at ``changed_at`` (read before
    a slow check of it; a re-hash of the same password keeps ``changed_at``).

    For starting a session after the check: a password reset committed meanwhile ended
    every session, so none may start after it. Read locked (on PostgreSQL) so that a reset
    in flight, which holds the row for update until it commits, either waits for the new
    session (and ends it) or is seen here; for update when the caller will re-hash, so two
    callers never both hold it for share and then wait on each other to write.
    """
    current = db.scalar(
        select(PasswordCredential.changed_at)
        .where(PasswordCredential.account_id == account_id)
        .with_for_update(read=not rehash)
    )
    return current is not None and current == changed_at


def exists(db: Session, account_id: str) -> bool:
    """Whether there is an account with this ID (active or not)."""
    return db.get(Account, account_id) is not None
