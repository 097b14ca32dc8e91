"""Refresh tokens: rotated on every use; a rotated token presented again revokes its
family; of two concurrent uses of one token exactly one succeeds (on a live server)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.accounts import DISABLED
from identity.models import Account
from identity.oidc.grants import RefreshTokenGrant
from identity.oidc.models import OidcRefreshToken, OidcSubject
from tests.identity.oidc import helpers
from tests.live_server import LiveApp


def _tokens(client: TestClient | httpx.Client, registered: helpers.Registered) -> dict[str, str]:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"][0],
            "redirect_uri": registered.redirect_uri,
            "code_verifier": verifier,
        },
        auth=helpers.basic(registered),
    )
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def _refresh(
    client: TestClient | httpx.Client, registered: helpers.Registered, token: str
) -> httpx.Response:
    return client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=helpers.basic(registered),
    )


def test_each_refresh_rotates_and_reuse_revokes_the_family(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _tokens(client, registered)["refresh_token"]
    second_response = _refresh(client, registered, first)
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["refresh_token"] != first
    assert second["access_token"] and second["scope"] == "openid offline_access"
    third = _refresh(client, registered, second["refresh_token"]).json()["refresh_token"]
    # The first token, presented again: refused, and everything descended from it dies.
    replay = _refresh(client, registered, first)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _refresh(client, registered, third).json()["error"] == "invalid_grant"
    with runtime.sessions() as db:
        rows = db.scalars(select(OidcRefreshToken)).all()
        actions = db.scalars(select(AuditRecord.action)).all()
    assert len(rows) == 3 and all(row.revoked_at is not None or row.used_at for row in rows)
    assert "identity.oidc.refresh.reused" in actions


def test_a_refresh_may_narrow_but_not_widen_the_scope(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    helpers.use_session(client, runtime, helpers.person(runtime, tmp_path).session_token)
    token = _tokens(client, registered)["refresh_token"]
    wider = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "scope": "openid email"},
        auth=helpers.basic(registered),
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_another_clients_refresh_token_is_refused(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    other = helpers.register(runtime, name="Other")
    helpers.use_session(client, runtime, helpers.person(runtime, tmp_path).session_token)
    token = _tokens(client, registered)["refresh_token"]
    response = _refresh(client, other, token)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    # ...and that failed attempt did not use the token up.
    assert _refresh(client, registered, token).status_code == 200


def test_two_concurrent_refreshes_exactly_one_succeeds(live_app: LiveApp, tmp_path: Path) -> None:
    runtime = live_app.runtime
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    with httpx.Client(base_url=live_app.url) as browser:
        browser.cookies.set("carebridge_session", someone.session_token)
        token = _tokens(browser, registered)["refresh_token"]
    barrier = threading.Barrier(2)
    results: list[httpx.Response] = []

    def use() -> None:
        with httpx.Client(base_url=live_app.url, timeout=30) as http:
            barrier.wait()
            results.append(_refresh(http, registered, token))

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response in results)
    assert statuses == [200, 400], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 400)
    assert loser.json()["error"] == "invalid_grant"
    # The family is revoked: even the winner's new refresh token no longer works.
    winner = next(r for r in results if r.status_code == 200).json()
    with httpx.Client(base_url=live_app.url) as http:
        after = _refresh(http, registered, winner["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


def test_a_narrowed_refresh_keeps_the_grant_and_its_scope(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    helpers.use_session(client, runtime, helpers.person(runtime, tmp_path).session_token)
    token = _tokens(client, registered)["refresh_token"]
    narrowed = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "scope": "openid"},
        auth=helpers.basic(registered),
    ).json()
    assert narrowed["scope"] == "openid" and narrowed["refresh_token"]
    # RFC 6749 §6: the new refresh token has the original scope, so the next refresh may
    # ask for all of it again.
    again = _refresh(client, registered, narrowed["refresh_token"]).json()
    assert again["scope"] == "openid offline_access"


def test_a_refresh_keeps_the_subject_and_a_disabled_account_gets_nothing(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    # The grant reads the account (status, patient, recorded sub) with the token itself.
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _tokens(client, registered)
    keys = runtime.keyring.verification_keys()
    subject = jwt.decode(first["access_token"], keys).claims["sub"]
    second = _refresh(client, registered, first["refresh_token"])
    assert second.status_code == 200, second.text
    assert jwt.decode(second.json()["access_token"], keys).claims["sub"] == subject
    with runtime.sessions() as db:
        recorded = db.scalars(select(OidcSubject.subject)).all()
    assert recorded == [subject]
    with transaction(runtime.sessions) as db:
        db.execute(update(Account).where(Account.id == someone.account_id).values(status=DISABLED))
    refused = _refresh(client, registered, second.json()["refresh_token"])
    assert refused.status_code == 400 and "access_token" not in refused.json()


def test_a_refresh_marks_its_token_used_and_stores_the_next(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _tokens(client, registered)["refresh_token"]
    second = _refresh(client, registered, first)
    assert second.status_code == 200, second.text
    with runtime.sessions() as db:
        rows = db.scalars(select(OidcRefreshToken).order_by(OidcRefreshToken.issued_at)).all()
    assert [row.used_at is not None for row in rows] == [True, False]
    assert rows[0].family_id == rows[1].family_id


def test_a_refresh_makes_no_orm_session(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    # Its statements run on the transaction's connection (identity.oidc.execution.InTransaction):
    # an ORM Session costs about a quarter of a refresh, and it needs none.
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _tokens(client, registered)["refresh_token"]
    with helpers.provider_sessions() as made:
        second = _refresh(client, registered, first)
        assert second.status_code == 200, second.text
        assert made == []
        # Reuse takes the other path, with a Session: the family revoked, the event audited.
        assert _refresh(client, registered, first).status_code == 400
        assert made


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "worker thread"])
def test_a_refresh_that_loses_the_claim_stores_nothing_and_revokes_audited(
    client: TestClient,
    runtime: Runtime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on_loop: bool,
) -> None:
    # Another request uses the token between this one's lookup and its claim (a race,
    # made certain here): this one stores no successor, and the family is revoked with
    # its audit record, in a transaction, by a Session made that late. On the event loop
    # (PostgreSQL) the claim comes back empty and a worker thread answers from the start.
    if not on_loop:
        helpers.on_worker_threads(runtime)
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _tokens(client, registered)["refresh_token"]
    raced = helpers.lose_the_claim(monkeypatch, RefreshTokenGrant, OidcRefreshToken)
    refused = _refresh(client, registered, first)
    loop = on_loop and not runtime.settings.uses_sqlite
    assert raced == (["event loop"] if loop else ["worker thread"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    with runtime.sessions() as db:
        rows = db.scalars(select(OidcRefreshToken)).all()
        actions = db.scalars(select(AuditRecord.action)).all()
    assert len(rows) == 1 and rows[0].revoked_at is not None
    assert actions.count("identity.oidc.refresh.reused") == 1
