"""Follow-ups of the accounts security review: disabled accounts lose their sessions, a
factor change signs out the account's other sessions, and starting upstream sign-ins is
throttled per client address."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts, throttle
from identity.credentials import recovery
from identity.models import (
    Account,
    AuthSession,
    PasswordCredential,
    UpstreamIdentity,
    UpstreamLoginState,
    new_id,
)
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


# Disabled accounts


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


# A factor change signs out the account's other sessions


def test_replacing_the_authenticator_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    intruder = factories.session(runtime, account_id, level=2)
    mine = factories.session(runtime, account_id, level=2)
    enrolment = client.post("/api/v1/mfa/totp/enroll", headers=_bearer(mine))
    assert enrolment.status_code == 200, enrolment.text
    assert enrolment.json()["replacing"] is True
    code = pyotp.TOTP(enrolment.json()["secret"]).now()
    confirmed = client.post("/api/v1/mfa/totp/confirm", json={"code": code}, headers=_bearer(mine))
    assert confirmed.status_code == 200, confirmed.text
    assert _works(client, confirmed.json()["session_token"])
    assert not _works(client, intruder)
    assert _session_count(runtime, account_id) == 1
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


def test_regenerating_recovery_codes_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        recovery.regenerate(db, runtime, account_id)
    intruder = factories.session(runtime, account_id, level=2)
    mine = factories.session(runtime, account_id, level=2)
    bystander = factories.session(runtime, factories.account(runtime), level=2)
    response = client.post("/api/v1/mfa/recovery-codes", headers=_bearer(mine))
    assert response.status_code == 200, response.text
    assert _works(client, mine)
    assert not _works(client, intruder)
    assert _works(client, bystander)
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


def test_unlinking_a_provider_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    link_id = new_id("upi")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(PasswordCredential(account_id=account_id, hash="$argon2id$x", changed_at=now))
        db.add(
            UpstreamIdentity(
                id=link_id,
                account_id=account_id,
                provider="social",
                issuer="https://social.example",
                subject="pat",
                linked_at=now,
            )
        )
    intruder = factories.session(runtime, account_id, level=2)  # signed in through the link
    mine = factories.session(runtime, account_id, level=2)
    response = client.delete(f"/api/v1/account/methods/{link_id}", headers=_bearer(mine))
    assert response.status_code == 204, response.text
    assert _works(client, mine)
    assert not _works(client, intruder)
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


# Starting upstream sign-ins, per client address


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # A plain OAuth 2 provider: starting a sign-in needs no request to it.
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps(
            [
                {
                    "name": "social",
                    "display_name": "Social",
                    "kind": "oauth2",
                    "authorize_url": "https://social.example/auth",
                    "token_url": "https://social.example/token",
                    "userinfo_url": "https://social.example/me",
                    "client_id": "carebridge",
                    "client_secret": "a-client-secret-long-enough-for-tests",
                }
            ]
        )
    )
    providers.chmod(0o600)
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, upstream_providers_file=providers
    )


def _states(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(UpstreamLoginState)) or 0


def test_starting_upstream_sign_ins_is_throttled_per_address(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)  # no lock runs out meanwhile
    free = 30  # starts per address before delays (throttle.UPSTREAM_START_ADDRESS)
    for _ in range(free + 1):  # the one past the free ones still starts, and locks
        response = client.get("/signin/upstream/social", follow_redirects=False)
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("https://social.example/auth?")
    assert _states(runtime) == free + 1

    refused = client.get("/signin/upstream/social", follow_redirects=False)
    assert refused.status_code == 429
    assert "Too many sign-ins started" in refused.text
    assert 'href="/signin"' in refused.text
    assert _states(runtime) == free + 1  # nothing stored for it
    assert ("identity.signin.upstream", "denied") in [row[:2] for row in _audit(runtime)]
