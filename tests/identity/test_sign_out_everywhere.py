"""Signing out everywhere: every session of the account ends, this one too, and every
app's grant with it; audited. Page and API, both databases."""

from __future__ import annotations

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from tests.identity import factories
from tests.identity.account_changes import bearer, grant, patient, post_form, refreshes


def _audited(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        return [(r.action, r.outcome, r.target) for r in rows]


def test_signing_out_everywhere_from_the_page(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    phone = factories.session(runtime, pat.account_id, level=2)
    someone_else = patient(runtime, login="kim@example.org").account_id
    bystander = factories.session(runtime, someone_else, level=2)
    mine = factories.sign_in(client, runtime, pat.account_id, level=2)
    registered, tokens = grant(client, runtime)
    page = client.get("/account/sessions")
    assert 'action="/account/sessions/revoke-all"' in page.text
    done = post_form(client, "/account/sessions", "/account/sessions/revoke-all", {})
    assert done.status_code == 303
    assert done.headers["location"] == "/signin?signed_out=1"
    for token in (phone, mine):
        assert client.get("/api/v1/sessions", headers=bearer(token)).status_code == 401
    assert client.get("/api/v1/sessions", headers=bearer(bystander)).status_code == 200
    assert not refreshes(client, registered, tokens["refresh_token"])
    assert client.get("/account", follow_redirects=False).status_code == 303
    target = f"account:{pat.account_id}"
    assert ("identity.session.revoke_all", "allowed", target) in _audited(runtime)


def test_signing_out_everywhere_through_the_api(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    phone = factories.session(runtime, pat.account_id, level=2)
    mine = factories.session(runtime, pat.account_id, level=2)
    assert client.delete("/api/v1/sessions", headers=bearer(mine)).status_code == 204
    assert client.get("/api/v1/sessions", headers=bearer(phone)).status_code == 401
    assert client.delete("/api/v1/sessions", headers=bearer(mine)).status_code == 401


def test_another_site_cannot_sign_someone_out_everywhere(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    mine = factories.sign_in(client, runtime, pat.account_id, level=2)
    forged = client.post("/account/sessions/revoke-all", data={}, follow_redirects=False)
    assert forged.status_code == 403
    assert client.get("/api/v1/sessions", headers=bearer(mine)).status_code == 200
