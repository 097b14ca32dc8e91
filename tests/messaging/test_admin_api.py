"""The operators' care-team API: what the CLI does, over HTTP, for a client-credentials
token with admin.care_teams of a client that acts for no care team. Every change is the
CLI's own function, audited with the client as the actor. Both databases."""

from __future__ import annotations

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from identity.oidc import clients
from messaging import roles
from tests.identity.account_changes import emails_to
from tests.identity.oidc import helpers
from tests.tokens import mint

from .conftest import OTHER_APP, PROVIDER_APP, World, start_thread

SCOPE = "admin.care_teams"
BASE = "/api/v1/admin/care-teams"
OPERATOR = "ops-console"


def _operator(world: World, scope: str = SCOPE, client_id: str = OPERATOR) -> dict[str, str]:
    return world.headers(mint(world.runtime, sub=client_id, client_id=client_id, scope=scope))


def _audited(world: World, action: str) -> list[tuple[str, str]]:
    with world.runtime.sessions() as db:
        rows = db.execute(
            select(AuditRecord.actor, AuditRecord.outcome).where(AuditRecord.action == action)
        ).all()
    return [(actor, str(outcome)) for actor, outcome in rows]


def test_an_operator_configures_a_team_and_its_topics(client: TestClient, world: World) -> None:
    ops = _operator(world)
    teams = client.get(BASE, headers=ops)
    assert teams.status_code == 200
    assert {t["id"] for t in teams.json()["care_teams"]} == {world.team, world.other_team}
    changed = client.patch(
        f"{BASE}/{world.team}",
        json={
            "patients_may_start": True,
            "auto_reply": "If this is an emergency, call 911.",
            "escalate_after_seconds": 4 * 3600,
            "roster_source": "acme",
        },
        headers=ops,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        "patients_may_start": True,
        "auto_reply": "If this is an emergency, call 911.",
        "escalate_after_seconds": 14400,
        "roster_source": "acme",
        "topics": [],
    }
    # Only what is sent changes; null clears.
    cleared = client.patch(
        f"{BASE}/{world.team}", json={"escalate_after_seconds": None}, headers=ops
    )
    assert cleared.json()["escalate_after_seconds"] is None
    assert cleared.json()["patients_may_start"] is True
    topic = client.post(f"{BASE}/{world.team}/topics", json={"label": "Refill"}, headers=ops)
    assert topic.status_code == 201
    shown = client.get(f"{BASE}/{world.team}", headers=ops).json()
    assert shown["topics"] == [topic.json()]
    retired = client.delete(f"{BASE}/{world.team}/topics/{topic.json()['id']}", headers=ops)
    assert retired.status_code == 204
    assert client.get(f"{BASE}/{world.team}", headers=ops).json()["topics"] == []
    again = client.delete(f"{BASE}/{world.team}/topics/{topic.json()['id']}", headers=ops)
    assert again.status_code == 422
    assert again.headers["content-type"] == "application/problem+json"
    # The CLI's functions audit with the client as the actor.
    assert _audited(world, "messaging.care_team.add_topic") == [(f"client:{OPERATOR}", "allowed")]


def test_bad_settings_and_an_unknown_team_are_problems(client: TestClient, world: World) -> None:
    ops = _operator(world)
    too_soon = client.patch(f"{BASE}/{world.team}", json={"escalate_after_seconds": 5}, headers=ops)
    assert too_soon.status_code == 400
    unknown = client.get(f"{BASE}/ct_nope", headers=ops)
    assert unknown.status_code == 404
    assert unknown.json()["status"] == 404


def test_an_operator_manages_care_relationships(client: TestClient, world: World) -> None:
    ops = _operator(world)
    path = f"{BASE}/{world.team}/care-relationships"
    started = client.post(path, json={"patient_id": world.patients["zeb"]}, headers=ops)
    assert started.status_code == 201, started.text
    assert started.json()["source"] == "operator"
    assert started.json()["created_by"] == f"client:{OPERATOR}"
    assert (
        client.post(path, json={"patient_id": world.patients["zeb"]}, headers=ops).status_code
        == 200
    )
    assert client.post(path, json={"patient_id": "nobody"}, headers=ops).status_code == 422
    ended = client.post(
        f"{path}/end",
        json={"patient_id": world.patients["zeb"], "reason": "moved away"},
        headers=ops,
    )
    assert ended.status_code == 200 and ended.json()["end_reason"] == "moved away"
    missing = client.post(
        f"{path}/end", json={"patient_id": world.patients["zeb"], "reason": "again"}, headers=ops
    )
    assert missing.status_code == 404
    history = client.get(path, headers=ops).json()["relationships"]
    assert [r["ended_at"] is not None for r in history] == [True]


def test_an_operator_manages_roles_pools_staff_and_sees_the_report(
    client: TestClient, world: World
) -> None:
    ops = _operator(world)
    team = f"{BASE}/{world.team}"
    role = client.post(f"{team}/roles", json={"name": "pharmacist"}, headers=ops)
    assert role.status_code == 201
    duplicate = client.post(f"{team}/roles", json={"name": "pharmacist"}, headers=ops)
    assert duplicate.status_code == 422
    listed = {r["name"]: r for r in client.get(f"{team}/roles", headers=ops).json()["roles"]}
    assert listed["pharmacist"]["staff"] == 0 and listed["clinician"]["staff"] == 1
    pool = client.post(
        f"{team}/pools", json={"name": "refills", "roles": ["pharmacist"]}, headers=ops
    )
    assert pool.status_code == 201
    pools = client.get(f"{team}/pools", headers=ops).json()["pools"]
    assert pools == [{"id": pool.json()["id"], "name": "refills", "roles": ["pharmacist"]}]
    staff = f"{team}/staff/{world.staff_account}"
    assert client.put(f"{staff}/role", json={"role": "pharmacist"}, headers=ops).status_code == 204
    held = client.delete(f"{team}/roles/{role.json()['id']}", headers=ops)
    assert held.status_code == 422  # held by the staff member
    assert client.delete(f"{team}/pools/{pool.json()['id']}", headers=ops).status_code == 204
    invited = client.post(
        f"{team}/staff/invites", json={"email": "new@clinic.example", "role": "nurse"}, headers=ops
    )
    assert invited.status_code == 201, invited.text
    assert len(emails_to(world.runtime, "new@clinic.example")) == 1
    assert client.get(f"{team}/break-glass", headers=ops).json() == {"events": []}
    assert client.delete(staff, headers=ops).status_code == 204
    assert client.delete(staff, headers=ops).status_code == 422
    assert client.delete(f"{team}/roles/{role.json()['id']}", headers=ops).status_code == 204
    # The staff member's token no longer acts for the team.
    assert client.get("/api/v1/messaging/threads", headers=world.staff()).status_code == 403
    assert _audited(world, "messaging.care_team.remove_staff") == [
        (f"client:{OPERATOR}", "allowed")
    ]


def test_a_patients_or_staffs_token_calling_the_admin_api_is_refused(
    client: TestClient, world: World
) -> None:
    # Minted with the scope (the provider never grants it to a person): refused anyway.
    for person in (world.patient("zeb", scope=SCOPE), world.staff(scope=SCOPE)):
        refused = client.patch(
            f"{BASE}/{world.team}", json={"patients_may_start": True}, headers=person
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
    assert (
        client.get(f"{BASE}/{world.team}", headers=_operator(world)).json()["patients_may_start"]
        is False
    )
    denied = _audited(world, "messaging.admin.care_team.configure")
    assert denied == [(f"client:{c}", "denied") for c in ("patient-app", PROVIDER_APP)]


def test_a_token_without_the_scope_is_refused(client: TestClient, world: World) -> None:
    weak = _operator(world, scope="admin.webhooks messaging.read messaging.write")
    for response in (
        client.get(BASE, headers=weak),
        client.post(f"{BASE}/{world.team}/roles", json={"name": "x"}, headers=weak),
        client.get(BASE),
    ):
        assert response.status_code in (401, 403)
    assert [r.name for r in roles.list_roles(world.runtime, world.team)].count("x") == 0


def test_a_team_admin_of_team_a_cannot_manage_team_b_through_it(
    client: TestClient, world: World
) -> None:
    roles.set_staff_role(world.runtime, world.team, world.staff_account, "team admin", actor="t")
    start_thread(client, world)
    team_b = f"{BASE}/{world.other_team}"
    attempts = (
        world.staff(scope=SCOPE),  # team A's admin, in person
        _operator(world, client_id=PROVIDER_APP),  # team A's app given the scope
        _operator(world, client_id=OTHER_APP),  # even team B's own app: not an operator
    )
    for headers in attempts:
        for response in (
            client.post(
                f"{team_b}/roles", json={"name": "mole", "is_team_admin": True}, headers=headers
            ),
            client.post(
                f"{team_b}/staff/invites",
                json={"email": "a@b.example", "role": "team admin"},
                headers=headers,
            ),
            client.get(f"{team_b}/break-glass", headers=headers),
        ):
            assert response.status_code == 403, response.text
    assert "mole" not in [r.name for r in roles.list_roles(world.runtime, world.other_team)]
    assert emails_to(world.runtime, "a@b.example") == []


def test_a_disabled_operator_clients_token_is_refused(client: TestClient, world: World) -> None:
    operator = helpers.register(world.runtime, scopes=SCOPE)
    ops = _operator(world, client_id=operator.client_id)
    assert client.get(BASE, headers=ops).status_code == 200
    with transaction(world.runtime.sessions) as db:
        clients.disable(db, operator.client_id)
    refused = client.get(BASE, headers=ops)
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
