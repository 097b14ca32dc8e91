"""Grants end with what they were granted by (issue 17, finding 3): disabling an account,
revoking a connected app, replaying a code or a refresh token, revoking a token and
disabling a client end the grants concerned at once: refresh tokens revoked for good, and
access tokens refused by introspection, userinfo and every resource API (messaging,
admin), on the next request. Both backends; on PostgreSQL the first exchange and refresh
run on the event loop, and a replay falls back to a worker thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.flows import status
from identity.oidc import clients, context
from identity.oidc.grants import AuthorizationCodeGrant
from messaging import access, care_teams
from tests.identity import factories
from tests.identity.roster_helpers import import_roster
from tests.oidc import helpers

READ_SCOPE = "openid offline_access messaging.read"
THREADS = "/api/v1/messaging/threads"


@pytest.fixture
def registered(runtime: Runtime) -> helpers.Registered:
    # A patient app: not any care team's, so its tokens act for the patient who granted.
    return helpers.register(runtime, scopes=READ_SCOPE, name="Patient App")


@pytest.fixture
def someone(client: TestClient, runtime: Runtime, tmp_path: Path) -> helpers.Person:
    signed_in = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, signed_in.session_token)
    return signed_in


def _code(client: TestClient, registered: helpers.Registered) -> tuple[str, str]:
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope=READ_SCOPE)
    return helpers.approve(client, params)["code"][0], verifier


def _tokens(client: TestClient, registered: helpers.Registered) -> dict[str, Any]:
    code, verifier = _code(client, registered)
    response = helpers.exchange(client, registered, code, verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refresh(client: TestClient, registered: helpers.Registered, token: str) -> httpx.Response:
    return client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=helpers.basic(registered),
    )


def _introspect(client: TestClient, registered: helpers.Registered, token: str) -> Any:
    response = client.post(
        "/oauth2/introspect", data={"token": token}, auth=helpers.basic(registered)
    )
    assert response.status_code == 200, response.text
    return response.json()


def _grant_of(runtime: Runtime, access_token: str) -> str:
    claims = jwt.decode(access_token, runtime.keyring.verification_keys()).claims
    return str(claims["grant_id"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _userinfo(client: TestClient, token: str) -> httpx.Response:
    return client.get("/oauth2/userinfo", headers=_bearer(token))


def _messaging(client: TestClient, token: str) -> httpx.Response:
    return client.get(THREADS, headers=_bearer(token))


def _works_everywhere(
    client: TestClient, registered: helpers.Registered, access_token: str
) -> None:
    assert _introspect(client, registered, access_token)["active"] is True
    assert _userinfo(client, access_token).status_code == 200
    assert _messaging(client, access_token).status_code == 200


def _refused_everywhere(
    client: TestClient, registered: helpers.Registered, access_token: str
) -> None:
    assert _introspect(client, registered, access_token) == {"active": False}
    assert _userinfo(client, access_token).status_code == 401
    _refused_by_messaging(client, access_token)


def _refused_by_messaging(client: TestClient, access_token: str) -> None:
    response = _messaging(client, access_token)
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.headers["content-type"] == "application/problem+json"


def _revoke_app(client: TestClient, registered: helpers.Registered) -> None:
    page = client.get("/account")
    response = client.post(
        "/account/apps/revoke",
        content=urlencode(
            {"csrf_token": factories.csrf(page.text), "client_id": registered.client_id}
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303


# Disabling an account


def test_disabled_then_enabled_account_refresh_token_stays_dead(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    assert status.set_active_by_id(runtime, someone.account_id, active=False)
    assert status.set_active_by_id(runtime, someone.account_id, active=True)
    refreshed = _refresh(client, registered, body["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert _introspect(client, registered, body["refresh_token"]) == {"active": False}
    # The enabled account signs in to the app again, afresh.
    helpers.use_session(client, runtime, factories.session(runtime, someone.account_id, level=2))
    _works_everywhere(client, registered, _tokens(client, registered)["access_token"])


def test_disabled_account_access_token_inactive_at_introspection(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    access_token = _tokens(client, registered)["access_token"]
    _works_everywhere(client, registered, access_token)
    assert status.set_active_by_id(runtime, someone.account_id, active=False)
    assert _introspect(client, registered, access_token) == {"active": False}
    _refused_everywhere(client, registered, access_token)
    # And for good: enabling the account gives it back nothing.
    assert status.set_active_by_id(runtime, someone.account_id, active=True)
    _refused_everywhere(client, registered, access_token)


def test_code_issued_before_a_disable_is_refused_after_enable(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _code(client, registered)
    assert status.set_active_by_id(runtime, someone.account_id, active=False)
    assert status.set_active_by_id(runtime, someone.account_id, active=True)
    response = helpers.exchange(client, registered, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "worker thread"])
def test_exchange_racing_a_disable_leaves_nothing_alive_after_enable(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
    monkeypatch: pytest.MonkeyPatch,
    on_loop: bool,
) -> None:
    # The account is disabled between an exchange's lookup (which found it active) and
    # its claim (which stores the refresh token): what the exchange gives must not
    # survive the account being enabled again.
    if not on_loop:
        helpers.on_worker_threads(runtime)
    _tokens(client, registered)  # a returning user: the subject is recorded
    code, verifier = _code(client, registered)
    save_token = AuthorizationCodeGrant.save_token

    def raced(grant: AuthorizationCodeGrant, token: dict[str, Any]) -> None:
        if context.plan() is None:
            # In a worker thread: the disable's writes, in the request's transaction,
            # before its claim.
            status._set(context.db(), someone.account_id, active=False, actor="test")
        else:
            # On the event loop the claim runs after Authlib answers: a disable
            # committed before then.
            assert status.set_active_by_id(runtime, someone.account_id, active=False)
        save_token(grant, token)

    monkeypatch.setattr(AuthorizationCodeGrant, "save_token", raced)
    response = helpers.exchange(client, registered, code, verifier)
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    body = response.json()
    assert status.set_active_by_id(runtime, someone.account_id, active=True)
    refreshed = _refresh(client, registered, body["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    _refused_everywhere(client, registered, body["access_token"])


# Revoking a connected app


def test_revoked_connected_app_access_token_refused_by_messaging_api(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    access_token = _tokens(client, registered)["access_token"]
    assert _messaging(client, access_token).status_code == 200
    _revoke_app(client, registered)
    _refused_by_messaging(client, access_token)


def test_revoked_connected_app_access_token_refused_by_userinfo(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    access_token = _tokens(client, registered)["access_token"]
    assert _userinfo(client, access_token).status_code == 200
    _revoke_app(client, registered)
    response = _userinfo(client, access_token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_revoked_connected_app_access_token_refused_by_introspection(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    other = helpers.register(
        runtime, scopes=READ_SCOPE, name="Other App", redirect_uri="https://other.example/cb"
    )
    access_token = _tokens(client, registered)["access_token"]
    other_token = _tokens(client, other)["access_token"]
    _revoke_app(client, registered)
    assert _introspect(client, registered, access_token) == {"active": False}
    # Only that app's grant ended.
    _works_everywhere(client, other, other_token)


# Replays


def test_replayed_code_withdraws_its_access_token(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    # RFC 6749 §4.1.2: a code used twice was stolen; what it gave is withdrawn.
    code, verifier = _code(client, registered)
    first = helpers.exchange(client, registered, code, verifier).json()
    _works_everywhere(client, registered, first["access_token"])
    again = helpers.exchange(client, registered, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    _refused_everywhere(client, registered, first["access_token"])


def test_refresh_reuse_withdraws_family_access_tokens(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    first = _tokens(client, registered)
    second = _refresh(client, registered, first["refresh_token"]).json()
    assert _grant_of(runtime, second["access_token"]) == _grant_of(runtime, first["access_token"])
    other = _tokens(client, registered)  # another grant of the same person to the same app
    _works_everywhere(client, registered, second["access_token"])
    # The first refresh token, presented again: its whole family ends.
    replay = _refresh(client, registered, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    for access_token in (first["access_token"], second["access_token"]):
        _refused_everywhere(client, registered, access_token)
    _works_everywhere(client, registered, other["access_token"])


def test_revoking_a_refresh_token_withdraws_its_grants_access_tokens(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    # RFC 7009 §2.1: the access tokens of the same grant are invalidated too.
    body = _tokens(client, registered)
    client.post(
        "/oauth2/revoke", data={"token": body["refresh_token"]}, auth=helpers.basic(registered)
    )
    _refused_everywhere(client, registered, body["access_token"])


def test_revoked_access_token_refused_by_messaging_api(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    assert _messaging(client, body["access_token"]).status_code == 200
    client.post(
        "/oauth2/revoke", data={"token": body["access_token"]}, auth=helpers.basic(registered)
    )
    _refused_by_messaging(client, body["access_token"])
    # One token: the grant goes on.
    assert _refresh(client, registered, body["refresh_token"]).status_code == 200


# Client credentials: the admin API


ROSTER_SOURCE = "/api/v1/admin/roster/sources/acme"


def _operator_token(client: TestClient, operator: helpers.Registered) -> str:
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "admin.roster"},
        auth=helpers.basic(operator),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_admin_api_refuses_withdrawn_token(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    import_roster(runtime, tmp_path)  # the source the operator reads
    operator = helpers.register(runtime, scopes="admin.roster", name="Ops")
    access_token = _operator_token(client, operator)
    assert client.get(ROSTER_SOURCE, headers=_bearer(access_token)).status_code == 200
    assert _introspect(client, operator, access_token)["active"] is True
    client.post("/oauth2/revoke", data={"token": access_token}, auth=helpers.basic(operator))
    response = client.get(ROSTER_SOURCE, headers=_bearer(access_token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert _introspect(client, operator, access_token) == {"active": False}
    # One token: the client's next one works.
    fresh = _operator_token(client, operator)
    assert client.get(ROSTER_SOURCE, headers=_bearer(fresh)).status_code == 200


def test_disabled_clients_tokens_are_refused_by_the_admin_and_messaging_apis(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    operator = helpers.register(runtime, scopes="admin.roster", name="Ops")
    admin_token = _operator_token(client, operator)
    person_token = _tokens(client, registered)["access_token"]
    assert client.get(ROSTER_SOURCE, headers=_bearer(admin_token)).status_code == 200
    assert _messaging(client, person_token).status_code == 200
    for client_id in (operator.client_id, registered.client_id):
        with transaction(runtime.sessions) as db:
            assert clients.disable(db, client_id)
    response = client.get(ROSTER_SOURCE, headers=_bearer(admin_token))
    assert response.status_code == 401
    _refused_by_messaging(client, person_token)
    assert _userinfo(client, person_token).status_code == 401


def test_revoked_or_disabled_apps_own_token_refused_by_messaging_within_the_cache_time(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A care team's app acting as itself: its token's standing is read once per
    # TEAM_CACHE_SECONDS per process (messaging.access), like its team.
    app = helpers.register(runtime, scopes="messaging.read", name="Clinic App")
    team = care_teams.create(runtime, name="Northside clinic", retention_days=30, actor="t")
    care_teams.add_client(runtime, team, app.client_id, actor="t")

    def app_token() -> str:
        response = client.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": "messaging.read"},
            auth=helpers.basic(app),
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def later() -> None:
        moment = time.monotonic() + access.TEAM_CACHE_SECONDS + 1
        monkeypatch.setattr(access.time, "monotonic", lambda: moment)

    revoked = app_token()
    assert _messaging(client, revoked).status_code == 200
    client.post("/oauth2/revoke", data={"token": revoked}, auth=helpers.basic(app))
    later()
    _refused_by_messaging(client, revoked)
    fresh = app_token()
    assert _messaging(client, fresh).status_code == 200
    with transaction(runtime.sessions) as db:
        assert clients.disable(db, app.client_id)
    later()
    _refused_by_messaging(client, fresh)
