"""``carebridge accounts disable|enable|unlock --account-id``: accounts that sign in only
through a provider have no email address to name them by (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.runtime import Runtime
from identity import accounts, throttle
from identity.flows import mfa
from identity.models import Account, AuthSession

from . import factories
from .test_throttle import PASSWORD, seed, signin, signup


def status_of(runtime: Runtime, account_id: str) -> str:
    with runtime.sessions() as db:
        account = db.get(Account, account_id)
        assert account is not None
        return account.status


def sessions_of(runtime: Runtime, account_id: str) -> int:
    with runtime.sessions() as db:
        query = select(func.count()).where(AuthSession.account_id == account_id)
        return int(db.scalar(query) or 0)


def audited(runtime: Runtime) -> list[tuple[str, str | None]]:
    with runtime.sessions() as db:
        return [(r.action, r.target) for r in db.scalars(select(AuditRecord))]


def test_a_provider_only_account_is_disabled_and_enabled_by_its_id(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account_id = factories.account(runtime)  # no login identifier: a provider's account
    factories.session(runtime, account_id, level=2)
    other = factories.account(runtime)
    factories.session(runtime, other, level=2)
    assert main(["accounts", "disable", "--account-id", account_id]) == 0
    assert "disabled" in capsys.readouterr().out
    assert status_of(runtime, account_id) == "disabled"
    assert sessions_of(runtime, account_id) == 0
    assert sessions_of(runtime, other) == 1
    assert main(["accounts", "enable", "--account-id", account_id]) == 0
    assert status_of(runtime, account_id) == "active"
    assert ("identity.account.disable", f"account:{account_id}") in audited(runtime)
    assert ("identity.account.enable", f"account:{account_id}") in audited(runtime)


def test_an_unknown_or_malformed_account_id_is_refused(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("disable", "enable", "unlock"):
        assert main(["accounts", command, "--account-id", "acc_nobody"]) == 1
        assert "no account has this ID" in capsys.readouterr().err
        assert main(["accounts", command, "--account-id", "someone@example.org"]) == 1
        assert "acc_" in capsys.readouterr().err
    assert audited(runtime) == []


def test_unlock_by_id_clears_the_login_and_second_factor_locks(
    client: TestClient, runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signup(client, "jane@example.org")
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, "jane@example.org")
    assert found is not None
    login = throttle.login_limit(accounts.login_hash(runtime.keyring, "jane@example.org"))
    seed(runtime, login, 100, datetime.now(UTC))
    seed(runtime, mfa.second_step_limit(found.account_id), 7, datetime.now(UTC))
    assert signin(client, "jane@example.org", PASSWORD)[0] == 429
    assert main(["accounts", "unlock", "--account-id", found.account_id]) == 0
    assert "107 failed attempts" in capsys.readouterr().out
    assert signin(client, "jane@example.org", PASSWORD)[0] == 200
    actions = audited(runtime)
    assert ("identity.signin.unlock", f"account:{found.account_id}") in actions
    assert ("identity.mfa.unlock", f"account:{found.account_id}") in actions


def test_unlock_by_id_of_a_provider_only_account_clears_its_second_factor_lock(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account_id = factories.account(runtime)
    limit = mfa.second_step_limit(account_id)
    seed(runtime, limit, 100, datetime.now(UTC))
    assert main(["accounts", "unlock", "--account-id", account_id]) == 0
    assert "100 failed attempts" in capsys.readouterr().out
    with runtime.sessions.begin() as db:
        assert throttle.DatabaseStore().state(db, limit, datetime.now(UTC)).failures == 0
