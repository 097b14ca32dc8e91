"""Disabling and enabling an account (operators, through ``carebridge accounts``).

A disabled account cannot sign in (password or upstream), and its sessions stop working:
disabling ends them all, and :func:`identity.sessions.load` refuses any session of an
account that is not active. It also ends every grant the account gave an app: refresh
tokens revoked and access tokens withdrawn for good (identity.oidc.withdrawals), so
enabling the account again revives none of them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import accounts, events, sessions
from identity.interfaces import PatientFollowers
from identity.models import Account
from identity.oidc import backchannel, withdrawals


def set_active(
    runtime: Runtime,
    login: str,
    *,
    active: bool,
    followers: PatientFollowers,
    actor: str = "operator",
) -> bool:
    """Enable or disable the account a normalised login identifies; False if none does.
    Disabling also ends every session and every grant of the account, tells the apps
    and care teams' clients that could read the patient (``account.disabled``) and sends
    back-channel logout tokens. Audited."""
    with transaction(runtime.sessions) as db:
        found = accounts.find_by_login(db, runtime.keyring, login)
        if found is None:
            return False
        return _set(db, found.account_id, active=active, followers=followers, actor=actor)


def set_active_by_id(
    runtime: Runtime,
    account_id: str,
    *,
    active: bool,
    followers: PatientFollowers,
    actor: str = "operator",
) -> bool:
    """:func:`set_active` by account ID: accounts that sign in only through a provider
    have no email address. False if there is no such account."""
    with transaction(runtime.sessions) as db:
        return _set(db, account_id, active=active, followers=followers, actor=actor)


def _set(
    db: Session, account_id: str, *, active: bool, followers: PatientFollowers, actor: str
) -> bool:
    # Disabling ends every session: the session lock (the account row, for update).
    lock = sessions.lock_account_sessions(db, account_id)
    account = db.get(Account, account_id)
    if lock is None or account is None:
        return False
    was_active = account.status == accounts.ACTIVE
    account.status = accounts.ACTIVE if active else accounts.DISABLED
    if not active:
        if was_active:
            events.account_disabled(db, followers, account.id)
            backchannel.queue(db, account.id)
        sessions.revoke_all(db, lock)
        withdrawals.end_grants(db, account.id)
    audit.append(
        db,
        actor=actor,
        action="identity.account.enable" if active else "identity.account.disable",
        outcome=Outcome.ALLOWED,
        target=f"account:{account.id}",
    )
    return True
