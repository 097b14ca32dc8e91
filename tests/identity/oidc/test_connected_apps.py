"""Connected apps on the account page: the remembered grants, and revoking one."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from identity.oidc.models import OidcConsent
from tests.identity import factories
from tests.identity.oidc import helpers


def _connect(client: TestClient, registered: helpers.Registered) -> str:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    body = helpers.exchange(client, registered, answer["code"][0], verifier).json()
    return str(body["refresh_token"])


def test_revoking_an_app_forgets_the_grant_and_its_refresh_tokens(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime, name="Clinic Scheduler")
    other = helpers.register(runtime, name="Pharmacy Helper", redirect_uri="https://rx.example/cb")
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    refresh = _connect(client, registered)
    other_refresh = _connect(client, other)
    page = client.get("/account")
    assert "Connected apps" in page.text
    assert "Clinic Scheduler" in page.text and "Pharmacy Helper" in page.text
    response = client.post(
        "/account/apps/revoke",
        content=urlencode(
            {"csrf_token": factories.csrf(page.text), "client_id": registered.client_id}
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    after = client.get("/account").text
    assert "Clinic Scheduler" not in after and "Pharmacy Helper" in after
    refreshed = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        auth=helpers.basic(registered),
    )
    assert refreshed.json()["error"] == "invalid_grant"
    still = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": other_refresh},
        auth=helpers.basic(other),
    )
    assert still.status_code == 200
    with runtime.sessions() as db:
        record = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "identity.oidc.consent.revoke")
        ).one()
        remaining = db.scalars(select(OidcConsent.client_id)).all()
    assert record.target == f"client:{registered.client_id}"
    assert record.actor == f"account:{someone.account_id}"
    assert remaining == [other.client_id]
    # The next authorization asks again.
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    assert client.get(f"/authorize?{urlencode(params)}").status_code == 200


def test_revoking_someone_elses_app_grant_is_not_found(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    owner = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, owner.session_token)
    _connect(client, registered)
    intruder = helpers.person(runtime, verified=False)
    helpers.use_session(client, runtime, intruder.session_token)
    page = client.get("/account")
    assert "No apps are connected" in page.text
    response = client.post(
        "/account/apps/revoke",
        content=urlencode(
            {"csrf_token": factories.csrf(page.text), "client_id": registered.client_id}
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    with runtime.sessions() as db:
        assert db.scalars(select(OidcConsent.account_id)).all() == [owner.account_id]


def test_audit_records_carry_ids_only(client: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    refresh = _connect(client, registered)
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord)).all()
    text = " ".join(f"{r.actor} {r.action} {r.target}" for r in rows)
    assert refresh not in text
    assert re.search(r"client:cli_", text)
