"""identity's tables. Secrets are stored hashed or encrypted, never as they were typed.

- Sign-in identifiers: a keyed lookup hash (HMAC, keyring pepper) to find the account,
  and the keyring-encrypted text to show it back to its owner.
- Passwords: Argon2id strings. Session tokens and recovery codes: keyed hashes (they are
  random and long, so a fast hash is enough; the pepper keeps a stolen table useless).
- TOTP seeds: encrypted under the keyring's KEK, bound to their account ID.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.ids import new_id as new_id  # noqa: PLC0414  (re-exported, for identity)
from carebridge.utc import UtcDateTime


class Account(Base):
    __tablename__ = "account"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # disabled accounts cannot sign in; locked ones wait out a throttle (see throttle.py).
    status: Mapped[str] = mapped_column(String(16), default="active")


class LoginIdentifier(Base):
    """What a person types to sign in with a password (an email address, usually)."""

    __tablename__ = "login_identifier"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    lookup_hash: Mapped[str] = mapped_column(String(64), unique=True)
    encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    # When its owner proved they read this address (None: not yet). Recovery e-mails go
    # only to a verified address.
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # When this address replaced the account's previous one (None: its first address).
    changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class PasswordCredential(Base):
    __tablename__ = "password_credential"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    hash: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TotpCredential(Base):
    """A TOTP seed. Unconfirmed until the first valid code; ``last_step`` rejects replays."""

    __tablename__ = "totp_credential"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_step: Mapped[int | None] = mapped_column(Integer)
    # A replacement seed being enrolled (encrypted like the first): the confirmed seed keeps
    # working until a code from the new one confirms it.
    pending_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)


class RecoveryCode(Base):
    __tablename__ = "recovery_code"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The code itself, encrypted to the session that generated it, until that session has
    # shown it once; then NULL, and only the hash remains.
    reveal_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)


class UpstreamIdentity(Base):
    """A social sign-in linked to an account, keyed by (issuer, subject), never by email."""

    __tablename__ = "upstream_identity"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="issuer_subject"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(255))
    linked_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AuthSession(Base):
    """A signed-in browser or app. The cookie holds the token; the table only its hash.

    ``level`` is how the session authenticated: 1 after a first factor (password or an
    upstream provider), 2 once a second factor passed too. ``authenticated_at`` is when
    the person last proved who they are (any factor: OIDC ``auth_time``, ``max_age``);
    ``stepped_up_at`` when they last proved the second factor (an authenticator or a
    recovery code; None: never in this session), which sensitive changes need
    (:func:`identity.authn.is_stepped_up`). ``first_factor`` is how the first factor was
    last proved in it: ``"password"`` or ``"upstream:<provider>"`` (None: a session from
    before it was recorded, read as unknown); recovering a lost second factor needs the
    password (:func:`identity.sessions.proved_password`).
    """

    __tablename__ = "auth_session"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A public handle for the "active sessions" page: revoking by handle, never by token.
    handle: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    level: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    authenticated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    stepped_up_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # "upstream:" and a provider's name (at most 64 characters) fit.
    first_factor: Mapped[str | None] = mapped_column(String(80), nullable=True)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    user_agent: Mapped[str] = mapped_column(String(200), default="")


class ThrottleCounter(Base):
    """Consecutive failures for one key ("account:…", "ip:…") and the lock they earned."""

    __tablename__ = "throttle_counter"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class UpstreamLoginState(Base):
    """One sign-in round trip to an upstream provider, found by its ``state`` (hashed).

    Deleted when the provider sends the browser back, so a state works once; the nonce and
    PKCE verifier travel encrypted in ``payload``.
    """

    __tablename__ = "upstream_login_state"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RosterImport(Base):
    """One run of ``carebridge roster import``: counts only, never a value from the file.

    ``outcome`` is "imported" (committed) or "refused" (bad input: nothing was written but
    this row, recorded in a transaction of its own with the audit event).
    """

    __tablename__ = "roster_import"
    __table_args__ = (
        CheckConstraint("mode IN ('full', 'partial')", name="mode"),
        CheckConstraint("outcome IN ('running', 'imported', 'refused')", name="outcome"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    ineligible: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class RosterMember(Base):
    """A person on a source's eligibility roster, known from then on by ``patient_id``.

    Nothing personal in plaintext: ``member_key`` (source + the source's member ID),
    ``identity_hash`` (DOB + SSN last 4), ``dob_hash``, ``last_name_hash`` and ``zip_hash``
    are keyed lookup hashes (identity.roster.hashes); first and last name, ZIP, group and
    member ID are in ``details_encrypted``, bound to the row's ``id``. ``patient_id`` is
    random, assigned at the first import and kept by every later one.
    """

    __tablename__ = "roster_member"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    member_key: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(40), unique=True)
    # Several people can share a DOB and SSN last 4: not unique.
    identity_hash: Mapped[str] = mapped_column(String(64), index=True)
    dob_hash: Mapped[str] = mapped_column(String(64))
    last_name_hash: Mapped[str] = mapped_column(String(64))
    zip_hash: Mapped[str] = mapped_column(String(64))
    details_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    # False once terminated or missing from a full re-import: verification refuses it.
    eligible: Mapped[bool] = mapped_column(Boolean)
    terminated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_import_id: Mapped[str] = mapped_column(ForeignKey("roster_import.id"))


class PatientLink(Base):
    """An account is at most one patient, a patient at most one account."""

    __tablename__ = "patient_link"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    patient_id: Mapped[str] = mapped_column(ForeignKey("roster_member.patient_id"), unique=True)
    linked_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ActivationCode(Base):
    """A one-time code staff issue for a patient ID; the patient redeems it with their DOB.

    Only ``code_hash`` (a keyed lookup hash of the normalised code) is kept; the code is
    shown once. Issuing a new code for a patient ends its earlier unused ones (their
    ``expires_at`` becomes the moment of reissue). Each code counts its own failures and
    is voided after a few (identity/flows/activate.py). ``reason`` is the operator's stated
    reason: an explanation, never personal data.
    """

    __tablename__ = "activation_code"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("roster_member.patient_id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500))
    # Wrong dates of birth presented with this code while it was usable, from any
    # account; at CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES the code is voided for good.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    voided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EmailVerification(Base):
    """A proof, sent by e-mail, that someone reads an address: a link and a short code.

    Both are kept only as keyed hashes. ``purpose`` says what confirming it does:
    ``signup``/``signin`` mark the account's login verified (and, through the code typed
    in the browser holding ``browser_hash``'s token, sign it in); ``add`` gives an
    account without a login the address in ``address_encrypted`` (bound to the account)
    as a verified one. Single use (``used_at``), expiring, void after a few wrong codes
    (``failures``); issuing a new one for an account ends its older ones
    (identity/flows/email_verification.py).
    """

    __tablename__ = "email_verification"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    # The keyed hash of the pending-state token the browser (or API client) that asked
    # holds; None for ``add`` (the account's session is the binding there).
    browser_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    address_hash: Mapped[str | None] = mapped_column(String(64))
    address_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    # ``signup``: the Argon2 hash of the password chosen, the account's once verified.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class StaffAction(Base):
    """Why staff did something to a patient or an account (the audit log has IDs only)."""

    __tablename__ = "staff_action"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(40), index=True)
    account_id: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(500))


class PasswordReset(Base):
    """A "forgot password" link (identity/flows/reset.py): ``id`` is the link's public
    selector, ``secret_hash`` the keyed hash of the whole token (selector and secret).

    Single use (``used_at``), valid until ``expires_at``; a newer link for the account
    ends the older unused ones (their ``expires_at`` becomes the moment of the new one).
    Used rows are the record of when the account's password was last reset by e-mail.
    """

    __tablename__ = "password_reset"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RecoveryRequest(Base):
    """A request to replace a lost second factor without a recovery code
    (identity/recovery.py): self-service (``kind="self"``: an e-mailed link, then date of
    birth and SSN last 4 against the account's own roster record) or staff-assisted
    (``kind="staff"``: an operator's one-time code e-mailed to the verified address).

    ``state``: started (link or code sent) → waiting (identity proved, the wait running)
    → completed, or cancelled at any point (``end_reason``).
    Secrets are kept as keyed hashes only: ``link_hash`` (the e-mailed link or the staff
    code), ``cancel_hash`` (the "this wasn't me" link, valid for the whole wait).
    ``session_handle`` binds a self-service link to the browser that asked for it.
    """

    __tablename__ = "recovery_request"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    session_handle: Mapped[str | None] = mapped_column(String(40))
    link_hash: Mapped[str | None] = mapped_column(String(64))
    link_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    link_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cancel_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    proved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    wait_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    operator: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[str | None] = mapped_column(String(500))
    reason: Mapped[str | None] = mapped_column(String(500))


class EmailChange(Base):
    """A change of an account's e-mail address (identity/email_change.py).

    Pending until the new address proves it reads the e-mail: the link and code live in
    ``email_verification`` (purpose ``change``, row ``verification_id``, keyed hashes
    only). Completed (``completed_at``): the old address (sealed as the login was, and its
    lookup hash) is kept so the undo link e-mailed to it (``undo_token_hash``, a keyed
    hash) can restore it until ``undo_until``; ``undone_at`` once it did.
    """

    __tablename__ = "email_change"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    verification_id: Mapped[str] = mapped_column(String(40), index=True)
    new_address_hash: Mapped[str] = mapped_column(String(64))
    new_address_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    old_address_hash: Mapped[str | None] = mapped_column(String(64))
    old_address_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The old address's own ``changed_at``, put back by an undo.
    old_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    undo_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    undo_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    undone_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
