"""Time-based one-time passwords (RFC 6238) as the second factor.

- A seed is 160 bits (RFC 4226 §4), encrypted under the keyring's KEK with associated data
  naming its account: a seed copied into another account's row does not open.
- A seed is unconfirmed until a valid code from it arrives: enrolment proves the
  authenticator app really holds it. Replacing an app keeps the confirmed seed working
  until the new one (``pending_encrypted``) is confirmed the same way.
- A seed being enrolled is encrypted to the session that made it (its handle in the
  associated data): another session of the account, say of someone who learnt the
  password, can neither see it nor confirm it, and gets a seed of its own instead.
- A code is accepted one time step (30 s) either side of now, for clock drift, and each
  time step at most once (RFC 6238 §5.2): ``last_step`` holds the newest step accepted and
  only a conditional UPDATE moves it forward, so two concurrent submissions of one code
  cannot both pass.
- The otpauth:// URI and its QR code name the issuer "carebridge" and a six-character
  hint derived from the account ID (a keyed hash, so it reveals nothing about the ID),
  never an email address: an authenticator's list, its cloud backup or a photo of the
  screen names no one.
"""

from __future__ import annotations

import base64
import hmac
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
import segno
from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from carebridge.keyring import DecryptionError, associated_data
from carebridge.runtime import Runtime
from identity.models import Account, TotpCredential

ISSUER = "carebridge"
DIGITS = 6
STEP_SECONDS = 30
WINDOW = 1  # steps accepted either side of now
_SECRET_CHARS = 32  # base32, 5 bits each: 160 bits


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str
    label: str  # the account hint the app shows next to "carebridge"
    # True when a confirmed authenticator stays active until this one is confirmed.
    replacing: bool
    # True when this call made the seed (False: the one already waiting).
    created: bool

    @property
    def grouped_secret(self) -> str:
        """The secret in groups of four, for typing it into an app by hand."""
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))

    @property
    def qr_data_uri(self) -> str:
        """The URI as an SVG QR code in a data: URI, for an <img> (the CSP allows data:)."""
        buffer = io.BytesIO()
        qr = segno.make(self.uri, error="m")
        qr.save(buffer, kind="svg", scale=5, border=4, dark="#000", light="#fff", xmldecl=False)
        return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _aad(account_id: str, owner: str | None) -> bytes:
    # owner: the handle of the session enrolling the seed; None once it is confirmed.
    if owner is None:
        return associated_data("totp", account_id)
    return associated_data("totp-enrolment", account_id, owner)


def _encrypt(runtime: Runtime, account_id: str, secret: str, owner: str | None = None) -> bytes:
    return runtime.keyring.encrypt(secret.encode("ascii"), _aad(account_id, owner))


def _decrypt(runtime: Runtime, account_id: str, blob: bytes, owner: str | None = None) -> str:
    return runtime.keyring.decrypt(blob, _aad(account_id, owner)).decode("ascii")


def _own_seed(runtime: Runtime, account_id: str, blob: bytes, owner: str) -> str | None:
    """The seed ``owner`` is enrolling, or None if another session made this one."""
    try:
        return _decrypt(runtime, account_id, blob, owner)
    except DecryptionError:
        return None


def label(runtime: Runtime, account_id: str) -> str:
    """The account hint shown in authenticator apps and on the security page."""
    return runtime.keyring.lookup_hash("totp-label", account_id)[:6].upper()


def provisioning_uri(runtime: Runtime, account_id: str, secret: str) -> str:
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    uri: str = totp.provisioning_uri(name=label(runtime, account_id), issuer_name=ISSUER)
    return uri


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step whose code ``code`` is, within the window around ``at``, or None."""
    code = "".join(code.split()).replace("-", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current: int = totp.timecode(time.time() if at is None else at)
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):  # every step compared
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            found = step
    return found


def confirmed(db: Session, account_id: str) -> TotpCredential | None:
    credential = db.get(TotpCredential, account_id)
    return credential if credential is not None and credential.confirmed_at else None


def begin(
    db: Session, runtime: Runtime, account_id: str, *, restart: bool, owner: str
) -> Enrolment:
    """The seed ``owner`` (a session handle) is enrolling: the one it already has waiting
    unless ``restart``, else a new one (also when the waiting one is another session's).

    Callers check who may do this: anyone signed in without a confirmed seed yet, and for a
    replacement only a recently re-authenticated session.
    """
    # One enrolment at a time per account (PostgreSQL; SQLite transactions are serial).
    db.get(Account, account_id, with_for_update=True)
    credential = db.get(TotpCredential, account_id, populate_existing=True)
    secret = pyotp.random_base32(_SECRET_CHARS)
    fresh = _encrypt(runtime, account_id, secret, owner)
    created = True
    if credential is None:
        db.add(
            TotpCredential(
                account_id=account_id, secret_encrypted=fresh, created_at=datetime.now(UTC)
            )
        )
    else:
        confirmed = credential.confirmed_at is not None
        waiting = credential.pending_encrypted if confirmed else credential.secret_encrypted
        own = None
        if waiting is not None and not restart:
            own = _own_seed(runtime, account_id, waiting, owner)
        if own is not None:
            secret, created = own, False
        elif confirmed:
            credential.pending_encrypted = fresh
        else:
            credential.secret_encrypted = fresh
            credential.created_at = datetime.now(UTC)
    db.flush()
    replacing = credential is not None and credential.confirmed_at is not None
    uri = provisioning_uri(runtime, account_id, secret)
    hint = label(runtime, account_id)
    return Enrolment(secret, uri, hint, replacing=replacing, created=created)


def confirm(
    db: Session,
    runtime: Runtime,
    account_id: str,
    code: str,
    *,
    owner: str,
    at: float | None = None,
) -> bool:
    """Activate the seed ``owner`` is enrolling with a code from it; False if the code is
    wrong or the seed is another session's.

    Conditional on the very seed the code was checked against, so a concurrent restart or a
    second confirmation of the same code changes nothing.
    """
    credential = db.get(TotpCredential, account_id)
    if credential is None:
        return False
    replacing = credential.confirmed_at is not None
    blob = credential.pending_encrypted if replacing else credential.secret_encrypted
    if blob is None:
        return False
    secret = _own_seed(runtime, account_id, blob, owner)
    step = None if secret is None else matching_step(secret, code, at)
    if secret is None or step is None:
        return False
    now = datetime.now(UTC)
    active = _encrypt(runtime, account_id, secret)  # no longer bound to one session
    query = update(TotpCredential).where(TotpCredential.account_id == account_id)
    if replacing:
        query = query.where(TotpCredential.pending_encrypted == blob).values(
            secret_encrypted=active, pending_encrypted=None, confirmed_at=now, last_step=step
        )
    else:
        query = query.where(
            TotpCredential.confirmed_at.is_(None), TotpCredential.secret_encrypted == blob
        ).values(secret_encrypted=active, confirmed_at=now, last_step=step)
    result = db.execute(query.execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def verify(
    db: Session, runtime: Runtime, account_id: str, code: str, *, at: float | None = None
) -> bool:
    """Check a code from the confirmed seed, and use up its time step.

    The step is recorded by an UPDATE that only matches while the stored step is older:
    of two requests carrying the same code, the second finds the row already moved on
    (PostgreSQL re-checks the condition after waiting for the first's row lock), so
    exactly one passes, and an earlier step than one already accepted never passes.
    """
    credential = confirmed(db, account_id)
    if credential is None:
        return False
    step = matching_step(_decrypt(runtime, account_id, credential.secret_encrypted), code, at)
    if step is None:
        return False
    result = db.execute(
        update(TotpCredential)
        .where(
            TotpCredential.account_id == account_id,
            TotpCredential.confirmed_at.is_not(None),
            or_(TotpCredential.last_step.is_(None), TotpCredential.last_step < step),
        )
        .values(last_step=step)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def remove(db: Session, account_id: str) -> None:
    credential = db.get(TotpCredential, account_id)
    if credential is not None:
        db.delete(credential)
        db.flush()
