"""Ending a person's access at once when they leave a care team's staff (offboarding).

Asked by messaging (through identity.interfaces) in the offboarding's transaction: every
web session of the account ends, and every grant it gave the team's clients (their
refresh tokens revoked, their access tokens withdrawn: refused on the next request, as
identity.oidc.withdrawals does for a disabled account). The account itself stays: the
person may be a patient too, and their grants to other apps are theirs.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from identity import sessions
from identity.oidc import withdrawals


def end_staff_access(
    db: Session, account_id: str, *, client_ids: Iterable[str], actor: str, request_id: str | None
) -> None:
    # The session lock (identity.sessions), so no session is raised meanwhile; the caller
    # calls this before writing any row of its own (lock order: the account row first).
    lock = sessions.lock_account_sessions(db, account_id)
    if lock is not None:
        sessions.revoke_all(db, lock)
    for client_id in client_ids:
        withdrawals.end_grants(db, account_id, client_id=client_id)
    audit.append(
        db,
        actor=actor,
        action="identity.staff_access.end",
        outcome=Outcome.ALLOWED,
        target=f"account:{account_id}",
        request_id=request_id,
    )
