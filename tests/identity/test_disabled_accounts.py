"""A disabled account: its sessions stop working, and the operator disables and enables
accounts (``carebridge accounts disable|enable``), ending their sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import accounts
from identity.models import Account, AuthSession
from tests.identity import factories

LOGIN = "pat@example.org"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _works(client: TestClient, token: str) -> bool:
    response = client.get("/api/v1/sessions", headers=_bearer(token))
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def _session_count(runtime: Runtime, account_id: str) -> int:
    with runtime.sessions() as db:
        query = select(func.count()).select_from(AuthSession)
        return db.scalar(query.where(AuthSession.account_id == account_id)) or 0


def _audit(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [(row.action, row.outcome, row.target) for row in rows]


def _enrolled_with_login(runtime: Runtime) -> str:
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=LOGIN, password_hash="$argon2id$x")
    factories.totp(runtime, account_id)
    return account_id


def test_sessions_of_a_disabled_account_stop_working(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2)
    assert _works(client, token)
    with transaction(runtime.sessions) as db:
        db.execute(update(Account).where(Account.id == account_id).values(status="disabled"))
    assert not _works(client, token)
    assert _session_count(runtime, account_id) == 0  # deleted on the way


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def readline(self) -> str:
        return self.text


def test_operator_disables_an_account_ending_its_sessions_and_enables_it_again(
    client: TestClient,
    runtime: Runtime,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account_id = _enrolled_with_login(runtime)
    other = factories.account(runtime)
    others_token = factories.session(runtime, other, level=2)
    tokens = [factories.session(runtime, account_id, level=2) for _ in range(2)]
    assert all(_works(client, token) for token in tokens)

    monkeypatch.setattr("sys.stdin", _Stdin(" Pat@Example.org \n"))
    assert main(["accounts", "disable"]) == 0
    assert "disabled" in capsys.readouterr().out
    with runtime.sessions() as db:
        account = db.get(Account, account_id)
        assert account is not None and account.status == "disabled"
    assert _session_count(runtime, account_id) == 0
    assert not any(_works(client, token) for token in tokens)
    assert _works(client, others_token)  # nobody else's
    assert ("identity.account.disable", "allowed", f"account:{account_id}") in _audit(runtime)

    monkeypatch.setattr("sys.stdin", _Stdin(f"{LOGIN}\n"))
    assert main(["accounts", "enable"]) == 0
    with runtime.sessions() as db:
        account = db.get(Account, account_id)
        assert account is not None and account.status == "active"
    assert _works(client, factories.session(runtime, account_id, level=2))
    assert ("identity.account.enable", "allowed", f"account:{account_id}") in _audit(runtime)


def test_disabling_an_unknown_address_says_so_and_changes_nothing(
    runtime: Runtime,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin("nobody@example.org\n"))
    assert main(["accounts", "disable"]) == 1
    assert "no account" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", _Stdin("not an address\n"))
    assert main(["accounts", "enable"]) == 1
    assert "one email address" in capsys.readouterr().err
    assert _audit(runtime) == []
