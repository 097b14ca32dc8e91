""" "I didn't sign up": the owner of an address, opening a verification link they did not
ask for, cancels the sign-up instead of finishing it.

Pre-hijacking: someone signs up with a victim's address and a password of their own; if
the owner confirmed the link, the stranger's password would become the account's.
Declining the link (``/email/confirm``'s second button, ``POST /api/v1/email/decline``)
uses it up without verifying anything, and when it is a sign-up's that was never finished
(the address unverified, no password yet: the chosen one still waits on the
verification) the whole account goes with it (identity.deletion: the same list of tables
an account deletion empties). A link of any other purpose (an older account's sign-in
verification, an added address) is only voided: that account is someone's. The answer
is the same either way, and a link that does not work gets the confirm page's one answer:
nothing tells what the link was for or whether an account existed. Counted with the
link's confirmations (the client address's codes-and-links budget); audited
(``identity.signup.cancel`` when an account went, ``identity.email.verify.declined``).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import deletion, email_verification, sessions, throttle
from identity.interfaces import Outward
from identity.models import LoginIdentifier, PasswordCredential

CANCEL_ACTION = "identity.signup.cancel"
DECLINE_ACTION = "identity.email.verify.declined"


class DeclineFailedError(Exception):
    """The link does not work (unknown, used, expired, voided): one answer."""


class TooManyDeclinesError(Exception):
    """The client address spent its budget of codes and links."""


def _unfinished(db: Session, account_id: str) -> bool:
    """A sign-up nobody finished: its address never verified, and no password yet."""
    identifier = db.get(LoginIdentifier, account_id)
    has_password = db.scalar(
        select(PasswordCredential.account_id).where(PasswordCredential.account_id == account_id)
    )
    return identifier is not None and identifier.verified_at is None and has_password is None


def _audit(db: Session, outcome: Outcome, target: str, request_id: str | None) -> None:
    audit.append(
        db,
        actor="anonymous",
        action=DECLINE_ACTION,
        outcome=outcome,
        target=target,
        request_id=request_id,
    )


def decline(
    runtime: Runtime,
    outward: Outward,
    token: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> None:
    """Use up the link's verification without verifying; an unfinished sign-up's account
    is deleted. DeclineFailedError, TooManyDeclinesError."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    # The count and the audit record commit; the errors are raised after.
    with transaction(runtime.sessions) as db:
        # Whose link, read unlocked; then the account's session lock before anything is
        # written (identity.sessions: a declined sign-up's account goes, sessions and
        # all). Claiming the link first would hold its row while waiting for the lock
        # that the same code, typed meanwhile in the sign-up's browser, holds while it
        # waits to claim that row: a deadlock on PostgreSQL.
        found = email_verification.by_token(db, runtime, token)
        lock = sessions.lock_account_sessions(db, found.account_id) if found else None
        locked = store.attempt(db, [address], now) is None
        row = None if locked or lock is None else found
        works = (
            row is not None
            and email_verification.usable(row, now)
            and email_verification.claim(db, row, now)
        )
        if locked:
            _audit(db, Outcome.DENIED, address.key, request_id)
        elif row is None or not works:
            _audit(db, Outcome.FAILED, address.key, request_id)
        else:
            throttle.settle(store, db, reset=[], refund=[address], now=now)
            if row.purpose == email_verification.SIGNUP and _unfinished(db, row.account_id):
                # Its waiting password goes with its verification rows.
                deletion.delete_account(
                    db,
                    runtime,
                    outward,
                    row.account_id,
                    actor="anonymous",
                    action=CANCEL_ACTION,
                    request_id=request_id,
                )
            else:
                _audit(db, Outcome.ALLOWED, f"account:{row.account_id}", request_id)
    if locked:
        raise TooManyDeclinesError
    if not works:
        raise DeclineFailedError
