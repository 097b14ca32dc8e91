"""Grants end with what they were granted by (issue 17, finding 3): disabling an account,
revoking a connected app, replaying a code or a refresh token, revoking a token and
disabling a client end the grants concerned at once: refresh tokens revoked for good, and
access tokens refused by introspection, userinfo and every resource API (messaging,
admin), on the next request. Both backends; on PostgreSQL the first exchange and refresh
run on the event loop, and a replay falls back to a worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from sqlalchemy import delete, select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamFollowers
from identity.flows import status
from identity.oidc import authorize, clients, consents
from identity.oidc.execution import Planned
from identity.oidc.grants import AuthorizationCodeGrant
from identity.oidc.models import OidcAuthorizationCode, OidcConsent
from identity.oidc.server import AuthorizationServer
from messaging import access, care_teams
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.identity.roster_helpers import import_roster

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
    assert status.set_active_by_id(
        runtime, someone.account_id, active=False, followers=CareTeamFollowers()
    )
    assert status.set_active_by_id(
        runtime, someone.account_id, active=True, followers=CareTeamFollowers()
    )
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
    assert status.set_active_by_id(
        runtime, someone.account_id, active=False, followers=CareTeamFollowers()
    )
    assert _introspect(client, registered, access_token) == {"active": False}
    _refused_everywhere(client, registered, access_token)
    # And for good: enabling the account gives it back nothing.
    assert status.set_active_by_id(
        runtime, someone.account_id, active=True, followers=CareTeamFollowers()
    )
    _refused_everywhere(client, registered, access_token)


def test_code_issued_before_a_disable_is_refused_after_enable(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _code(client, registered)
    assert status.set_active_by_id(
        runtime, someone.account_id, active=False, followers=CareTeamFollowers()
    )
    assert status.set_active_by_id(
        runtime, someone.account_id, active=True, followers=CareTeamFollowers()
    )
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
        execution = grant.server.execution
        if not isinstance(execution, Planned):
            # In a worker thread: the disable's writes, in the request's transaction,
            # before its claim.
            status._set(
                execution.session(),
                someone.account_id,
                active=False,
                followers=CareTeamFollowers(),
                actor="test",
            )
        else:
            # On the event loop the claim runs after Authlib answers: a disable
            # committed before then.
            assert status.set_active_by_id(
                runtime, someone.account_id, active=False, followers=CareTeamFollowers()
            )
        save_token(grant, token)

    monkeypatch.setattr(AuthorizationCodeGrant, "save_token", raced)
    response = helpers.exchange(client, registered, code, verifier)
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    body = response.json()
    assert status.set_active_by_id(
        runtime, someone.account_id, active=True, followers=CareTeamFollowers()
    )
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


def _prompt_none(
    client: TestClient, registered: helpers.Registered
) -> tuple[dict[str, list[str]], str]:
    """The app sends the person through authorization again, expecting no page: the
    redirect's parameters, and the PKCE verifier."""
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope=READ_SCOPE, prompt="none")
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 303, response.text[:500]
    return parse_qs(urlsplit(response.headers["location"]).query), verifier


def test_authorize_racing_an_app_revoke_leaves_nothing_alive(
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The person has connected the app; it sends them through /authorize?prompt=none, and
    # they revoke the app after the authorization read the remembered grant (its check,
    # one transaction) and before it issues the code (its response, the next one).
    first = _tokens(client, registered)
    run = authorize.run_in_threadpool
    revoked: list[bool] = []

    async def raced(work: Callable[[], Any]) -> Any:
        result = await run(work)
        if work.__name__ == "check":
            revoked.append(
                consents.revoke(runtime, someone.account_id, registered.client_id, request_id=None)
            )
        return result

    monkeypatch.setattr(authorize, "run_in_threadpool", raced)
    answer, _verifier = _prompt_none(client, registered)
    monkeypatch.undo()
    assert revoked == [True]
    # No code: the grant it rested on is gone, so the app is told to ask.
    assert answer.get("error") == ["consent_required"], answer
    assert "code" not in answer
    assert consents.connected_apps(runtime, someone.account_id) == []
    refreshed = _refresh(client, registered, first["refresh_token"])
    assert refreshed.status_code == 400
    _refused_everywhere(client, registered, first["access_token"])
    # Nothing was left for a second revocation to end.
    assert not consents.revoke(runtime, someone.account_id, registered.client_id, request_id=None)


def test_app_revoke_racing_an_authorization_ends_the_code_it_issues(
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The revocation starts while the authorization issues its code: it waits for the
    # authorization to commit (the remembered grant is locked; SQLite takes one writer at
    # a time), and then ends the new code's grant with the others.
    _tokens(client, registered)
    create = AuthorizationServer.create_authorization_response
    revoked: list[bool] = []
    revoking: list[threading.Thread] = []

    def raced(server: AuthorizationServer, *args: Any, **kwargs: Any) -> Any:
        def revoke() -> None:
            revoked.append(
                consents.revoke(runtime, someone.account_id, registered.client_id, request_id=None)
            )

        revoking.append(threading.Thread(target=revoke))
        revoking[0].start()
        revoking[0].join(timeout=1)  # long enough to finish, had it not waited
        return create(server, *args, **kwargs)

    monkeypatch.setattr(AuthorizationServer, "create_authorization_response", raced)
    answer, verifier = _prompt_none(client, registered)
    monkeypatch.undo()
    revoking[0].join(timeout=10)
    assert revoked == [True]
    assert consents.connected_apps(runtime, someone.account_id) == []
    # The code issued meanwhile gives nothing.
    exchanged = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert exchanged.status_code == 400 and exchanged.json()["error"] == "invalid_grant"


def test_revoking_an_app_ends_its_grants_even_without_a_remembered_grant(
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
) -> None:
    # A grant the app holds with no remembered grant beside it (as the race above left
    # one before it was closed): revoking the app still ends it.
    body = _tokens(client, registered)
    with transaction(runtime.sessions) as db:
        db.execute(delete(OidcConsent))
    assert consents.revoke(runtime, someone.account_id, registered.client_id, request_id=None)
    assert _refresh(client, registered, body["refresh_token"]).status_code == 400
    _refused_everywhere(client, registered, body["access_token"])


def test_code_issued_before_an_app_revoke_is_refused_after_it(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _code(client, registered)
    _revoke_app(client, registered)
    response = helpers.exchange(client, registered, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


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


# A used code presented again without its PKCE verifier ends nothing: anyone who saw the
# code (a log, a browser's history) could present it.


def _public_app(runtime: Runtime) -> helpers.Registered:
    return helpers.register(
        runtime,
        client_type="public",
        scopes=READ_SCOPE,
        name="Phone App",
        redirect_uri="https://phone.example/cb",
    )


def _present(
    client: TestClient, app: helpers.Registered, code: str, verifier: str | None
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return client.post("/oauth2/token", data=data)


def _a_day_later(runtime: Runtime) -> None:
    """The codes expired most of a day ago: still kept (identity.oidc.purge.GRACE)."""
    with transaction(runtime.sessions) as db:
        db.execute(
            update(OidcAuthorizationCode).values(expires_at=datetime.now(UTC) - timedelta(hours=23))
        )


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord.action)).all())


def _public_grant_works(client: TestClient, app: helpers.Registered, body: dict[str, Any]) -> None:
    assert _userinfo(client, body["access_token"]).status_code == 200
    assert _messaging(client, body["access_token"]).status_code == 200
    refreshed = client.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": app.client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "worker thread"])
@pytest.mark.parametrize("verifier", ["wrong", "none"])
def test_late_replay_of_a_public_clients_used_code_does_not_end_the_grant(
    client: TestClient,
    runtime: Runtime,
    someone: helpers.Person,
    on_loop: bool,
    verifier: str,
) -> None:
    # Someone who saw a phone app's used code replays it a day later with the app's
    # public client_id and no verifier, or a made-up one: refused, audited, and the
    # person's grant goes on.
    if not on_loop:
        helpers.on_worker_threads(runtime)
    app = _public_app(runtime)
    code, right = _code(client, app)
    first = _present(client, app, code, right)
    assert first.status_code == 200, first.text
    _a_day_later(runtime)
    replay = _present(client, app, code, None if verifier == "none" else "x" * 43)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    _public_grant_works(client, app, first.json())
    actions = _actions(runtime)
    assert "identity.oidc.code.reused_without_verifier" in actions
    assert "identity.oidc.code.reused" not in actions


def test_replay_of_a_used_code_without_its_verifier_ends_nothing_within_its_lifetime(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    app = _public_app(runtime)
    code, right = _code(client, app)
    first = _present(client, app, code, right)
    assert first.status_code == 200, first.text
    replay = _present(client, app, code, None)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    _public_grant_works(client, app, first.json())


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "worker thread"])
def test_late_replay_with_the_verifier_still_ends_the_grant(
    client: TestClient, runtime: Runtime, someone: helpers.Person, on_loop: bool
) -> None:
    # Whoever holds the verifier as well could have redeemed the code: the grant ends.
    if not on_loop:
        helpers.on_worker_threads(runtime)
    app = _public_app(runtime)
    code, right = _code(client, app)
    first = _present(client, app, code, right)
    assert first.status_code == 200, first.text
    _a_day_later(runtime)
    replay = _present(client, app, code, right)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    body = first.json()
    assert _userinfo(client, body["access_token"]).status_code == 401
    _refused_by_messaging(client, body["access_token"])
    assert "identity.oidc.code.reused" in _actions(runtime)


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
