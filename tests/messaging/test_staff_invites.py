"""Staff invites: a team admin e-mails a one-time enrolment link for a role; the invited
person signs in (second factor done) and accepts, once, before it expires, with the
invited address only. Attack paths refused with friendly pages. Both databases."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord, Outcome
from carebridge.db import transaction
from carebridge.utc import utcnow
from identity.oidc import subjects
from messaging import care_teams, roles
from messaging.models import StaffInvite
from tests.identity import factories
from tests.identity.account_changes import emails_to, patient, post_form
from tests.messaging.conftest import BOTH, PROVIDER_APP, World
from tests.tokens import mint

INVITES = "/api/v1/messaging/staff/invites"
INVITED = "new.nurse@clinic.example"


def _admin(world: World) -> dict[str, str]:
    admin = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, admin, actor="t", role="team admin")
    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject="admin-sub", account_id=admin)
    token = mint(world.runtime, sub="admin-sub", client_id=PROVIDER_APP, scope=BOTH, auth_time=0)
    return world.headers(token)


def _invite(client: TestClient, world: World) -> str:
    """Invite INVITED as a nurse; returns the link's token, read from the e-mail."""
    sent = client.post(INVITES, json={"email": INVITED, "role": "nurse"}, headers=_admin(world))
    assert sent.status_code == 201, sent.text
    (mail,) = emails_to(world.runtime, INVITED)
    assert mail["subject"] == "You are invited to join a care team"
    assert "Northside" not in mail["text"]  # not even the team's name
    found = re.search(r"/staff/enrol\?token=([A-Za-z0-9_-]+)", mail["text"])
    assert found is not None
    return found.group(1)


def _nurses(world: World) -> int:
    return next(r.staff for r in roles.list_roles(world.runtime, world.team) if r.name == "nurse")


def test_an_invited_person_signs_in_and_joins_with_the_role(
    client: TestClient, world: World
) -> None:
    token = _invite(client, world)
    link = f"/staff/enrol?token={token}"
    # Not signed in: on to sign in (or sign up), and back.
    assert client.get(link, follow_redirects=False).headers["location"].startswith("/signin")
    person = patient(world.runtime, login=INVITED)
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    shown = client.get(link)
    assert shown.status_code == 200
    assert "as nurse" in shown.text
    joined = post_form(client, link, "/staff/enrol", {"token": token})
    assert joined.status_code == 200, joined.text
    assert "You are now a staff member of Northside clinic." in joined.text
    assert _nurses(world) == 1


def test_an_invite_link_reused_is_refused(client: TestClient, world: World) -> None:
    token = _invite(client, world)
    person = patient(world.runtime, login=INVITED)
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    link = f"/staff/enrol?token={token}"
    assert post_form(client, link, "/staff/enrol", {"token": token}).status_code == 200
    again = client.get(link)
    assert again.status_code == 410
    assert "This invitation was already used." in again.text


def test_an_invite_link_expired_is_refused(client: TestClient, world: World) -> None:
    token = _invite(client, world)
    with transaction(world.runtime.sessions) as db:
        db.execute(update(StaffInvite).values(expires_at=utcnow() - timedelta(seconds=1)))
    person = patient(world.runtime, login=INVITED)
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    expired = client.get(f"/staff/enrol?token={token}")
    assert expired.status_code == 410
    assert "This invitation has expired." in expired.text
    assert _nurses(world) == 0


def test_an_invite_link_for_another_address_is_refused(client: TestClient, world: World) -> None:
    token = _invite(client, world)
    someone = patient(world.runtime, login="someone.else@example.com")
    factories.sign_in(client, world.runtime, someone.account_id, level=2)
    link = f"/staff/enrol?token={token}"
    assert client.get(link).status_code == 403
    # A POST straight at the form (CSRF token from another page) is refused too.
    csrf = factories.csrf(client.get("/account").text)
    posted = client.post("/staff/enrol", data={"csrf_token": csrf, "token": token})
    assert posted.status_code == 403
    assert _nurses(world) == 0
    with world.runtime.sessions() as db:
        denied = db.scalars(
            select(AuditRecord.target).where(
                AuditRecord.action == "messaging.staff.enrol",
                AuditRecord.outcome == Outcome.DENIED,
                AuditRecord.actor == f"account:{someone.account_id}",
            )
        ).all()
    assert denied == ["invite:other_address"]


def test_an_invite_link_with_a_forged_token_is_refused(client: TestClient, world: World) -> None:
    person = patient(world.runtime, login=INVITED)
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    assert client.get(f"/staff/enrol?token={'A' * 43}").status_code == 404


def test_a_non_admin_staff_member_inviting_is_refused(client: TestClient, world: World) -> None:
    refused = client.post(INVITES, json={"email": INVITED, "role": "nurse"}, headers=world.staff())
    assert refused.status_code == 403
    assert (
        client.post(
            INVITES, json={"email": INVITED, "role": "nurse"}, headers=world.app()
        ).status_code
        == 403
    )
    assert emails_to(world.runtime, INVITED) == []


def test_invites_beyond_the_hourly_cap_are_refused(client: TestClient, world: World) -> None:
    admin = _admin(world)
    cap = world.runtime.settings.staff_invites_per_hour
    for n in range(cap):
        sent = client.post(
            INVITES, json={"email": f"p{n}@x.example", "role": "nurse"}, headers=admin
        )
        assert sent.status_code == 201
    over = client.post(INVITES, json={"email": "late@x.example", "role": "nurse"}, headers=admin)
    assert over.status_code == 429


def _link_of_latest_mail(world: World, address: str) -> str:
    found = re.search(
        r"/staff/enrol\?token=([A-Za-z0-9_-]+)", emails_to(world.runtime, address)[-1]["text"]
    )
    assert found is not None
    return found.group(1)


def test_rejoining_through_an_invite_sent_by_an_offboarded_admin_is_refused(
    client: TestClient, world: World
) -> None:
    # A team admin about to leave invites an address of theirs: once offboarded, the
    # link they sent is withdrawn with them; another admin's invite stays good.
    leaving = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, leaving, actor="t", role="team admin")
    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject="leaving-sub", account_id=leaving)
    headers = world.headers(
        mint(world.runtime, sub="leaving-sub", client_id=PROVIDER_APP, scope=BOTH, auth_time=0)
    )
    sent = client.post(INVITES, json={"email": INVITED, "role": "nurse"}, headers=headers)
    assert sent.status_code == 201, sent.text
    token = _link_of_latest_mail(world, INVITED)
    kept = client.post(
        INVITES,
        json={"email": "other.nurse@clinic.example", "role": "nurse"},
        headers=_admin(world),
    )
    assert kept.status_code == 201, kept.text
    care_teams.remove_staff(world.runtime, world.team, leaving, actor="operator")
    person = patient(world.runtime, login=INVITED)
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    link = f"/staff/enrol?token={token}"
    assert client.get(link).status_code == 410
    csrf = factories.csrf(client.get("/account").text)
    refused = client.post("/staff/enrol", data={"csrf_token": csrf, "token": token})
    assert refused.status_code == 410
    assert _nurses(world) == 0
    with world.runtime.sessions() as db:
        pending = db.scalars(select(StaffInvite.id).where(StaffInvite.expires_at > utcnow())).all()
        withdrawn = db.scalars(
            select(AuditRecord.target).where(
                AuditRecord.action == "messaging.staff.invite_withdraw"
            )
        ).all()
    assert pending == [kept.json()["id"]]
    assert withdrawn == [f"invite:{sent.json()['id']}"]


def test_rejoining_through_an_invite_to_an_offboarded_staff_members_address_is_refused(
    client: TestClient, world: World
) -> None:
    # A member invited to another role who is offboarded before accepting: the pending
    # link would make them staff again.
    person = patient(world.runtime, login=INVITED)
    care_teams.add_staff(world.runtime, world.team, person.account_id, actor="t", role="nurse")
    token = _invite(client, world)
    care_teams.remove_staff(world.runtime, world.team, person.account_id, actor="operator")
    factories.sign_in(client, world.runtime, person.account_id, level=2)
    link = f"/staff/enrol?token={token}"
    assert client.get(link).status_code == 410
    csrf = factories.csrf(client.get("/account").text)
    refused = client.post("/staff/enrol", data={"csrf_token": csrf, "token": token})
    assert refused.status_code == 410
    assert _nurses(world) == 0


def test_an_invite_for_a_role_of_another_team_is_refused(client: TestClient, world: World) -> None:
    roles.add_role(
        world.runtime,
        world.other_team,
        "chief",
        sees_all_pools=True,
        is_team_admin=True,
        actor="t",
    )
    refused = client.post(INVITES, json={"email": INVITED, "role": "chief"}, headers=_admin(world))
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert emails_to(world.runtime, INVITED) == []
