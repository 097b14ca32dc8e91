"""Topics route a patient's thread to a pool: only the staff whose role works the pool,
and roles that see every pool, see it. Both databases."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from carebridge.db import transaction
from identity.oidc import subjects
from messaging import care_teams, roles
from messaging.interfaces import (
    CareTeamError,
    add_topic,
    configure,
    operator_start,
    route_topic,
    settings_of,
)
from tests.identity import factories
from tests.messaging.conftest import PROVIDER_APP, World

THREADS = "/api/v1/messaging/threads"


def _staff(world: World, role: str, subject: str) -> str:
    """Another staff member of the team, with ``role``, known to the provider app."""
    account = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, account, actor="t", role=role)
    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject=subject, account_id=account)
    return account


def _billing_topic(world: World) -> tuple[str, str]:
    """zeb may write on a "Billing question" topic routed to the billing pool, worked by
    a billing role. Returns (topic, pool)."""
    runtime = world.runtime
    configure(runtime, world.team, actor="t", patients_may_start=True)
    operator_start(runtime, world.team, world.patients["zeb"], actor="t")
    roles.add_role(
        runtime, world.team, "billing", sees_all_pools=False, is_team_admin=False, actor="t"
    )
    pool = roles.add_pool(runtime, world.team, "billing", roles=["billing"], actor="t")
    topic = add_topic(runtime, world.team, "Billing question", actor="t", pool_id=pool)
    return topic, pool


def _write(client: TestClient, world: World, topic: str) -> str:
    response = client.post(
        THREADS,
        json={"care_team_id": world.team, "topic_id": topic, "subject": "Bill", "body": "Why?"},
        headers=world.patient("zeb"),
    )
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["thread"]["id"]
    return thread_id


def _listed(client: TestClient, world: World, subject: str) -> set[str]:
    response = client.get(THREADS, headers=world.staff(subject=subject))
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["threads"]}


def test_a_patients_thread_on_a_routed_topic_is_seen_by_its_pool_not_by_a_nurse(
    client: TestClient, world: World
) -> None:
    topic, pool = _billing_topic(world)
    _staff(world, "billing", "billing-sub")
    _staff(world, "nurse", "nurse-sub")
    thread_id = _write(client, world, topic)
    seen = client.get(f"{THREADS}/{thread_id}", headers=world.app()).json()["thread"]
    assert seen["pool_id"] == pool
    assert _listed(client, world, "billing-sub") == {thread_id}
    assert client.get(
        f"{THREADS}/{thread_id}", headers=world.staff(subject="billing-sub")
    ).is_success
    assert _listed(client, world, "nurse-sub") == set()
    refused = client.get(f"{THREADS}/{thread_id}", headers=world.staff(subject="nurse-sub"))
    assert refused.status_code == 404


def test_a_role_that_sees_every_pool_sees_a_routed_patient_thread(
    client: TestClient, world: World
) -> None:
    topic, _ = _billing_topic(world)
    _staff(world, "team admin", "admin-sub")
    thread_id = _write(client, world, topic)
    assert _listed(client, world, "admin-sub") == {thread_id}


def test_a_topic_routed_back_to_the_team_wide_pool_reaches_every_role_from_then_on(
    client: TestClient, world: World
) -> None:
    topic, pool = _billing_topic(world)
    _staff(world, "nurse", "nurse-sub")
    routed = _write(client, world, topic)
    route_topic(world.runtime, world.team, topic, None, actor="t")
    assert settings_of(world.runtime, world.team).topics[0].pool_id is None
    team_wide = _write(client, world, topic)
    # Threads already started keep their pool.
    assert _listed(client, world, "nurse-sub") == {team_wide}
    route_topic(world.runtime, world.team, topic, pool, actor="t")
    assert settings_of(world.runtime, world.team).topics[0].pool_id == pool
    assert routed not in _listed(client, world, "nurse-sub")


def test_routing_a_topic_to_another_teams_pool_is_refused(world: World) -> None:
    topic, _ = _billing_topic(world)
    foreign = roles.add_pool(world.runtime, world.other_team, "other", roles=[], actor="t")
    with pytest.raises(CareTeamError):
        route_topic(world.runtime, world.team, topic, foreign, actor="t")
    with pytest.raises(CareTeamError):
        add_topic(world.runtime, world.team, "Other", actor="t", pool_id=foreign)
    assert settings_of(world.runtime, world.team).topics[0].pool_id is not None


def test_removing_a_pool_sends_its_topics_to_the_team_wide_pool(world: World) -> None:
    topic, pool = _billing_topic(world)
    roles.remove_pool(world.runtime, world.team, pool, actor="t")
    assert [(t.id, t.pool_id) for t in settings_of(world.runtime, world.team).topics] == [
        (topic, None)
    ]
