"""Staff see what their job needs: a role sees the team-wide pool's threads and its own
pools', and any other thread of the team only by breaking the glass (a typed reason,
audited, the team admins told by e-mail with no PHI). Both databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.utc import utcnow
from identity.oidc import subjects
from messaging import care_teams, retention, roles
from messaging.models import BreakGlassGrant, Thread
from tests.identity.account_changes import emails_to, patient
from tests.messaging.conftest import OTHER_APP, PROVIDER_APP, World
from tests.tokens import mint

THREADS = "/api/v1/messaging/threads"
READ_ONLY = "messaging.read"


def _front_desk_with_a_billing_pool(world: World) -> tuple[str, str]:
    """The staff member becomes front desk, working a billing pool; a clinical pool is
    worked by clinicians only. Returns (billing pool, clinical pool)."""
    runtime = world.runtime
    billing = roles.add_pool(runtime, world.team, "billing", roles=["front desk"], actor="t")
    clinical = roles.add_pool(runtime, world.team, "clinical", roles=["clinician"], actor="t")
    roles.set_staff_role(runtime, world.team, world.staff_account, "front desk", actor="t")
    return billing, clinical


def _open(client: TestClient, world: World, pool: str | None, subject: str) -> str:
    body = {"patient_id": world.patients["zeb"], "subject": subject, "body": "Hello."}
    if pool is not None:
        body["pool_id"] = pool
    response = client.post(THREADS, json=body, headers=world.app())
    assert response.status_code == 201, response.text
    assert response.json()["thread"]["pool_id"] == pool
    thread_id: str = response.json()["thread"]["id"]
    return thread_id


def test_staff_list_only_the_team_wide_and_their_pools_threads(
    client: TestClient, world: World
) -> None:
    billing, clinical = _front_desk_with_a_billing_pool(world)
    team_wide = _open(client, world, None, "Welcome")
    bill = _open(client, world, billing, "Your invoice")
    _open(client, world, clinical, "Your biopsy")
    listed = client.get(THREADS, headers=world.staff())
    assert listed.status_code == 200
    assert {t["id"] for t in listed.json()["threads"]} == {team_wide, bill}
    # The app itself (client credentials) still sees every thread of its team.
    assert len(client.get(THREADS, headers=world.app()).json()["threads"]) == 3


def test_staff_opening_a_thread_outside_their_pools_is_refused_like_a_missing_one(
    client: TestClient, world: World
) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    missing = client.get(f"{THREADS}/th_{'A' * 22}", headers=world.staff())
    staff = world.staff()
    for response in (
        client.get(f"{THREADS}/{secret}", headers=staff),
        client.post(f"{THREADS}/{secret}/messages", json={"body": "Hi"}, headers=staff),
        client.post(f"{THREADS}/{secret}/read", json={}, headers=staff),
        client.post(f"{THREADS}/{secret}/close", headers=staff),
        client.post(
            f"{THREADS}/{secret}/attachments?filename=a.pdf",
            content=b"%PDF-1.4\n%%EOF\n",
            headers={**staff, "Content-Type": "application/octet-stream"},
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == missing.json()["detail"]
    # Nothing was posted or closed: the thread is as the team left it.
    thread = client.get(f"{THREADS}/{secret}", headers=world.app()).json()
    assert thread["thread"]["status"] == "open"
    assert len(thread["messages"]) == 1


def test_staff_learning_of_other_pools_threads_from_unread_counts_is_refused(
    client: TestClient, world: World
) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    team_wide = _open(client, world, None, "Welcome")
    secret = _open(client, world, clinical, "Your biopsy")
    for thread_id in (team_wide, secret, secret):
        replied = client.post(
            f"{THREADS}/{thread_id}/messages", json={"body": "Thanks"}, headers=world.patient("zeb")
        )
        assert replied.status_code == 201, replied.text
    # The team's app sees every pool: three unread messages in two threads.
    everything = client.get("/api/v1/messaging/unread", headers=world.app()).json()
    assert (everything["unread_messages"], everything["unread_threads"]) == (3, 2)
    # The front desk counts only what it may open: the team-wide thread's one message.
    seen = client.get("/api/v1/messaging/unread", headers=world.staff())
    assert seen.status_code == 200, seen.text
    assert (seen.json()["unread_messages"], seen.json()["unread_threads"]) == (1, 1)
    (line,) = seen.json()["care_teams"]
    assert (line["unread_messages"], line["unread_threads"]) == (1, 1)


def test_staff_routing_a_new_thread_to_a_pool_they_do_not_see_is_refused(
    client: TestClient, world: World
) -> None:
    billing, clinical = _front_desk_with_a_billing_pool(world)
    body = {"patient_id": world.patients["zeb"], "subject": "S", "body": "B"}
    refused = client.post(THREADS, json={**body, "pool_id": clinical}, headers=world.staff())
    assert refused.status_code == 422
    other = roles.add_pool(world.runtime, world.other_team, "other", roles=[], actor="t")
    foreign = client.post(THREADS, json={**body, "pool_id": other}, headers=world.app())
    assert foreign.status_code == 422
    allowed = client.post(THREADS, json={**body, "pool_id": billing}, headers=world.staff())
    assert allowed.status_code == 201


def test_breaking_the_glass_opens_the_thread_audits_and_tells_the_team_admins(
    client: TestClient, world: World
) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    admin = patient(world.runtime, login="admin@clinic.example")
    care_teams.add_staff(world.runtime, world.team, admin.account_id, actor="t", role="team admin")
    reason = "Patient called in distress; clinician unavailable"
    broken = client.post(
        f"{THREADS}/{secret}/break-glass", json={"reason": reason}, headers=world.staff(READ_ONLY)
    )
    assert broken.status_code == 200, broken.text
    assert broken.json()["thread_id"] == secret
    read = client.get(f"{THREADS}/{secret}", headers=world.staff())
    assert read.status_code == 200
    assert secret in {t["id"] for t in client.get(THREADS, headers=world.staff()).json()["threads"]}
    with world.runtime.sessions() as db:
        actions = db.scalars(
            select(AuditRecord.action).where(
                AuditRecord.target == f"thread:{secret}",
                AuditRecord.actor == f"account:{world.staff_account}",
            )
        ).all()
    assert "messaging.thread.break_glass" in actions
    (notice,) = emails_to(world.runtime, admin.login)
    assert notice["subject"] == "Emergency access was used in your care team"
    # No PHI: neither the reason, the thread, the patient nor the subject.
    for secret_text in (reason, secret, world.patients["zeb"], "biopsy"):
        assert secret_text not in notice["text"]
    # The team admin's report names who, which thread, when and why.
    admin_token = world.headers(_staff_token(world, admin.account_id, "admin-sub"))
    report = client.get("/api/v1/messaging/break-glass", headers=admin_token)
    assert report.status_code == 200, report.text
    (event,) = report.json()["events"]
    assert (event["account_id"], event["thread_id"], event["reason"]) == (
        world.staff_account,
        secret,
        reason,
    )
    # Anyone else's token gets no report.
    assert client.get("/api/v1/messaging/break-glass", headers=world.staff()).status_code == 403


def _staff_token(world: World, account_id: str, subject: str) -> str:

    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject=subject, account_id=account_id)
    return mint(
        world.runtime,
        sub=subject,
        client_id=PROVIDER_APP,
        scope="messaging.read messaging.write",
        auth_time=0,
    )


def test_break_glass_without_a_reason_is_refused(client: TestClient, world: World) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    url = f"{THREADS}/{secret}/break-glass"
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "because"}):
        refused = client.post(url, json=body, headers=world.staff())
        assert refused.status_code in (400, 422), refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"{THREADS}/{secret}", headers=world.staff()).status_code == 404


def test_break_glass_on_another_teams_thread_is_refused(client: TestClient, world: World) -> None:
    body = {"patient_id": world.patients["zeb"], "subject": "Elsewhere", "body": "B"}
    other = client.post(THREADS, json=body, headers=world.app(OTHER_APP)).json()["thread"]["id"]
    reason = {"reason": "Patient called in distress, urgent"}
    refused = client.post(f"{THREADS}/{other}/break-glass", json=reason, headers=world.staff())
    assert refused.status_code == 404
    # A patient's token cannot break the glass either.
    mine = _open(client, world, None, "Hello")
    by_patient = client.post(
        f"{THREADS}/{mine}/break-glass", json=reason, headers=world.patient("zeb")
    )
    assert by_patient.status_code == 403


def test_break_glass_on_a_shredded_thread_is_refused(client: TestClient, world: World) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    with transaction(world.runtime.sessions) as db:
        thread = db.get(Thread, secret)
        assert thread is not None
        retention.shred(db, thread, actor="t", moment=utcnow())
    reason = {"reason": "Patient called in distress, urgent"}
    refused = client.post(f"{THREADS}/{secret}/break-glass", json=reason, headers=world.staff())
    assert refused.status_code == 404
    with world.runtime.sessions() as db:
        assert db.scalars(select(BreakGlassGrant)).all() == []


def test_a_break_glass_grant_past_its_hours_opens_nothing(client: TestClient, world: World) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    reason = {"reason": "Patient called in distress, urgent"}
    broken = client.post(f"{THREADS}/{secret}/break-glass", json=reason, headers=world.staff())
    assert broken.status_code == 200, broken.text
    assert client.get(f"{THREADS}/{secret}", headers=world.staff()).status_code == 200
    with transaction(world.runtime.sessions) as db:
        db.execute(update(BreakGlassGrant).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get(f"{THREADS}/{secret}", headers=world.staff()).status_code == 404
    listed = client.get(THREADS, headers=world.staff()).json()["threads"]
    assert secret not in {t["id"] for t in listed}


def test_staff_downloading_an_attachment_outside_their_pools_is_refused(
    client: TestClient, world: World
) -> None:
    _, clinical = _front_desk_with_a_billing_pool(world)
    secret = _open(client, world, clinical, "Your biopsy")
    uploaded = client.post(
        f"{THREADS}/{secret}/attachments?filename=result.pdf",
        content=b"%PDF-1.4\n%%EOF\n",
        headers={**world.app(), "Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 201, uploaded.text
    (attachment,) = uploaded.json()["attachments"]
    url = f"{THREADS}/{secret}/attachments/{attachment['id']}"
    assert client.get(url, headers=world.app()).status_code == 200
    refused = client.get(url, headers=world.staff())
    assert refused.status_code == 404
    assert b"%PDF" not in refused.content
