"""Offboarding a staff member (a team admin's API call, or the operator's CLI): the
membership, the person's web sessions and their grants to the team's apps end at once,
audited; a token they still hold is refused on its next request. Both databases."""

from __future__ import annotations

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from identity import sessions
from identity.oidc import subjects
from messaging import care_teams, roles
from tests.identity import factories
from tests.messaging.conftest import BOTH, PROVIDER_APP, World, start_thread
from tests.tokens import mint

THREADS = "/api/v1/messaging/threads"


def _admin(world: World) -> dict[str, str]:
    """A team admin of world.team, with a token from the team's app."""
    admin = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, admin, actor="t", role="team admin")
    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject="admin-sub", account_id=admin)
    token = mint(world.runtime, sub="admin-sub", client_id=PROVIDER_APP, scope=BOTH, auth_time=0)
    return world.headers(token)


def test_an_offboarded_staff_members_token_is_refused_at_once(
    client: TestClient, world: World
) -> None:
    thread = start_thread(client, world)
    held = world.staff()
    session = factories.session(world.runtime, world.staff_account, level=2)
    assert client.get(f"{THREADS}/{thread}", headers=held).status_code == 200
    gone = client.delete(f"/api/v1/messaging/staff/{world.staff_account}", headers=_admin(world))
    assert gone.status_code == 204, gone.text
    # The same, still unexpired token: no thread, no list, no post.
    assert client.get(f"{THREADS}/{thread}", headers=held).status_code == 404
    assert client.get(THREADS, headers=held).status_code == 403
    posted = client.post(f"{THREADS}/{thread}/messages", json={"body": "Hi"}, headers=held)
    assert posted.status_code == 404
    with world.runtime.sessions() as db:
        assert sessions.load(db, world.runtime, session) is None
        actions = set(
            db.scalars(
                select(AuditRecord.action).where(
                    AuditRecord.target == f"account:{world.staff_account}"
                )
            )
        )
    assert {"messaging.care_team.remove_staff", "identity.staff_access.end"} <= actions


def test_a_non_admin_staff_member_offboarding_is_refused(client: TestClient, world: World) -> None:
    other = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, other, actor="t", role="nurse")
    refused = client.delete(f"/api/v1/messaging/staff/{other}", headers=world.staff())
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    # An app token (client credentials) is no team admin either.
    assert client.delete(f"/api/v1/messaging/staff/{other}", headers=world.app()).status_code == 403
    assert {r.name for r in roles.list_roles(world.runtime, world.team) if r.staff} == {
        "clinician",
        "nurse",
    }


def test_a_team_admin_offboarding_another_teams_staff_is_refused(
    client: TestClient, world: World
) -> None:
    elsewhere = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.other_team, elsewhere, actor="t")
    refused = client.delete(f"/api/v1/messaging/staff/{elsewhere}", headers=_admin(world))
    assert refused.status_code == 404
    assert [r.staff for r in roles.list_roles(world.runtime, world.other_team) if r.staff] == [1]
