"""Security notices by e-mail: telling an account's owner that something changed.

Sent for a changed password, a second factor added or removed (an authenticator
confirmed or turned off, recovery codes regenerated), a sign-in method linked, and the
account deleted; only to the account's sign-in address, and only once its owner has
verified it (``LoginIdentifier.verified_at``): an unverified address may be someone
else's. Each notice is queued in the caller's transaction, so it goes out exactly when
the change commits. Links and nothing else: no name, no date of birth, no care team.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.orm import Session

from carebridge.runtime import Runtime
from identity import accounts, emails
from identity.interfaces import EmailSender
from identity.models import LoginIdentifier

# Where a notice sends someone who did not make the change (the forgot-password page).
FORGOT_PASSWORD_PATH = "/password/forgot"  # noqa: S105  (a path, not a password)


class Notice(StrEnum):
    """The notices, by template name (identity/templates/identity/email/)."""

    PASSWORD_CHANGED = "password_changed"  # noqa: S105  (a template's name)
    SECOND_FACTOR_ADDED = "second_factor_added"
    SECOND_FACTOR_REMOVED = "second_factor_removed"
    RECOVERY_CODES_REGENERATED = "recovery_codes_regenerated"
    SIGN_IN_METHOD_LINKED = "sign_in_method_linked"
    ACCOUNT_DELETED = "account_deleted"


def verified_address(db: Session, runtime: Runtime, account_id: str) -> str | None:
    """The account's sign-in address if its owner verified it, else None."""
    row = db.get(LoginIdentifier, account_id)
    if row is None or row.verified_at is None:
        return None
    return accounts.login_of(db, runtime.keyring, account_id)


def send(
    db: Session, runtime: Runtime, sender: EmailSender, account_id: str, notice: Notice
) -> bool:
    """Queue ``notice`` to the account's verified address in ``db``'s transaction; False
    (nothing sent) if it has none."""
    address = verified_address(db, runtime, account_id)
    if address is None:
        return False
    link = None
    if notice is not Notice.ACCOUNT_DELETED:
        link = runtime.settings.issuer.rstrip("/") + FORGOT_PASSWORD_PATH
    emails.send(db, sender, runtime.settings, to=address, email=emails.Email(notice, link=link))
    return True
