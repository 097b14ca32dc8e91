"""Disabling and enabling an account (operators, through ``carebridge accounts``).

A disabled account cannot sign in (password or upstream), and its sessions stop working:
disabling ends them all, and :func:`identity.sessions.load` refuses any session of an
account that is not active.
"""

from __future__ import annotations

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import accounts, sessions
from identity.models import Account


def set_active(runtime: Runtime, login: str, *, active: bool, actor: str = "operator") -> bool:
    """Enable or disable the account a normalised login identifies; False if none does.
    Disabling also ends every session of the account. Audited."""
    with transaction(runtime.sessions) as db:
        found = accounts.find_by_login(db, runtime.keyring, login)
        if found is None:
            return False
        account = db.get(Account, found.account_id, with_for_update=True)
        assert account is not None  # noqa: S101  (found by its login a moment ago)
        account.status = accounts.ACTIVE if active else accounts.DISABLED
        if not active:
            sessions.revoke_all(db, account.id)
        audit.append(
            db,
            actor=actor,
            action="identity.account.enable" if active else "identity.account.disable",
            outcome=Outcome.ALLOWED,
            target=f"account:{account.id}",
        )
    return True
