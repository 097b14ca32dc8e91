"""identity's events for apps (identity/events.py): an app revoked, an account disabled or
deleted, a roster link ended. Each goes, in the change's own transaction, to the clients
that could read the patient: the apps the person gave a grant (by the pairwise ``sub``
each was given) and the care teams' clients that follow the patient (by patient ID),
no others; IDs only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from joserfc import jwt
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge import wiring
from carebridge.app import create_app
from carebridge.db import transaction
from carebridge.events.models import Event
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamFollowers
from identity import deletion
from identity.flows import status
from identity.oidc import consents
from identity.roster import importer, staff
from messaging import care_teams
from tests.identity.oidc import helpers
from tests.identity.roster_helpers import HEADER, PEOPLE
from tests.tokens import mint

TEAM_APP = "team-app"
IDLE_TEAM_APP = "idle-team-app"  # a team with no thread with the patient


@dataclass
class Scene:
    runtime: Runtime
    person: helpers.Person
    app: helpers.Registered  # the patient connected it (a grant, a pairwise sub)
    stranger: helpers.Registered  # registered, never given a grant by this person
    sub: str  # the patient's sub with ``app``
    thread_id: str

    @property
    def patient_id(self) -> str:
        assert self.person.patient_id is not None
        return self.person.patient_id


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


def _team_token(runtime: Runtime) -> dict[str, str]:
    token = mint(runtime, sub=TEAM_APP, client_id=TEAM_APP, scope="messaging.read messaging.write")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scene(runtime: Runtime, client: TestClient, tmp_path: Path) -> Scene:
    person = helpers.person(runtime, tmp_path)
    app = helpers.register(runtime, name="Patient app")
    stranger = helpers.register(runtime, name="Stranger", redirect_uri="https://rx.example/cb")
    helpers.use_session(client, runtime, person.session_token)
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(
        app, challenge, scope="openid offline_access messaging.read"
    )
    answer = helpers.approve(client, params)
    tokens = helpers.exchange(client, app, answer["code"][0], verifier).json()
    sub = jwt.decode(tokens["id_token"], runtime.keyring.verification_keys()).claims["sub"]
    team = care_teams.create(runtime, name="Northside clinic", retention_days=30, actor="t")
    care_teams.add_client(runtime, team, TEAM_APP, actor="t")
    idle = care_teams.create(runtime, name="Idle clinic", retention_days=30, actor="t")
    care_teams.add_client(runtime, idle, IDLE_TEAM_APP, actor="t")
    assert person.patient_id is not None
    response = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": person.patient_id, "subject": "Your results", "body": "Fine."},
        headers=_team_token(runtime),
    )
    assert response.status_code == 201, response.text
    return Scene(runtime, person, app, stranger, sub, response.json()["thread"]["id"])


def told(runtime: Runtime, client_id: str, event_type: str) -> list[dict[str, str]]:
    with runtime.sessions() as db:
        return [
            dict(data)
            for data in db.scalars(
                select(Event.data)
                .where(Event.client_id == client_id, Event.type == event_type)
                .order_by(Event.seq)
            )
        ]


def everyone_told(runtime: Runtime, event_type: str) -> set[str]:
    with runtime.sessions() as db:
        return set(db.scalars(select(Event.client_id).where(Event.type == event_type)))


def test_disabling_an_account_tells_its_app_by_its_sub_and_the_care_team_by_patient_id(
    scene: Scene,
) -> None:
    runtime = scene.runtime
    assert scene.sub != scene.patient_id  # the app gets a pairwise subject
    followers = CareTeamFollowers()
    assert status.set_active_by_id(
        runtime, scene.person.account_id, active=False, followers=followers
    )
    assert told(runtime, scene.app.client_id, "account.disabled") == [{"patient": scene.sub}]
    assert told(runtime, TEAM_APP, "account.disabled") == [{"patient": scene.patient_id}]
    # Disabling it again tells nobody anything new.
    assert status.set_active_by_id(
        runtime, scene.person.account_id, active=False, followers=followers
    )
    assert everyone_told(runtime, "account.disabled") == {scene.app.client_id, TEAM_APP}
    assert len(told(runtime, TEAM_APP, "account.disabled")) == 1


def test_an_app_without_a_grant_hearing_of_a_disabled_account_is_refused(
    scene: Scene,
) -> None:
    status.set_active_by_id(
        scene.runtime, scene.person.account_id, active=False, followers=CareTeamFollowers()
    )
    told_clients = everyone_told(scene.runtime, "account.disabled")
    assert scene.stranger.client_id not in told_clients
    assert IDLE_TEAM_APP not in told_clients  # its team has no thread with the patient


def test_deleting_an_account_tells_its_app_and_the_care_team_before_the_grant_goes(
    scene: Scene,
) -> None:
    runtime = scene.runtime
    with transaction(runtime.sessions) as db:
        deleted = deletion.delete_account(
            db, runtime, wiring.identity_outward(runtime), scene.person.account_id, actor="test"
        )
    assert deleted is not None
    assert told(runtime, scene.app.client_id, "account.deleted") == [{"patient": scene.sub}]
    assert told(runtime, TEAM_APP, "account.deleted") == [{"patient": scene.patient_id}]
    assert everyone_told(runtime, "account.deleted") == {scene.app.client_id, TEAM_APP}


def _team_writes(client: TestClient, scene: Scene) -> None:
    response = client.post(
        f"/api/v1/messaging/threads/{scene.thread_id}/messages",
        json={"body": "One more thing."},
        headers=_team_token(scene.runtime),
    )
    assert response.status_code == 201, response.text


def test_a_revoked_app_is_told_once_and_hears_of_no_more_messages(
    scene: Scene, client: TestClient
) -> None:
    runtime = scene.runtime
    _team_writes(client, scene)
    heard = len(told(runtime, scene.app.client_id, "message.created"))
    assert heard >= 2  # the thread's first message and this one: it could read them
    for _ in range(2):
        consents.revoke(runtime, scene.person.account_id, scene.app.client_id, request_id=None)
    assert told(runtime, scene.app.client_id, "grant.revoked") == [{"patient": scene.sub}]
    # Told to that app alone.
    assert everyone_told(runtime, "grant.revoked") == {scene.app.client_id}
    # What it was told of the patient and had not fetched is taken back; nothing new comes.
    _team_writes(client, scene)
    assert told(runtime, scene.app.client_id, "message.created") == []
    assert len(told(runtime, TEAM_APP, "message.created")) == heard + 1


def _import(runtime: Runtime, tmp_path: Path, rows: list[str], *, partial: bool) -> None:
    path = tmp_path / "next.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    importer.import_roster(
        runtime, path, source="acme", partial=partial, followers=CareTeamFollowers()
    )


def _row(name: str, status_text: str = "") -> str:
    return ",".join([*PEOPLE[name], status_text])


def test_a_termination_on_the_roster_ends_the_link_once(scene: Scene, tmp_path: Path) -> None:
    runtime = scene.runtime
    _import(runtime, tmp_path, [_row("zeb", "terminated")], partial=True)
    assert told(runtime, scene.app.client_id, "patient.roster_link_ended") == [
        {"patient": scene.sub}
    ]
    assert told(runtime, TEAM_APP, "patient.roster_link_ended") == [{"patient": scene.patient_id}]
    # Listed as terminated again: the link ended already.
    _import(runtime, tmp_path, [_row("zeb", "terminated")], partial=True)
    assert len(told(runtime, TEAM_APP, "patient.roster_link_ended")) == 1
    assert everyone_told(runtime, "patient.roster_link_ended") == {
        scene.app.client_id,
        TEAM_APP,
    }


def test_a_full_import_leaving_the_patient_out_ends_the_link(scene: Scene, tmp_path: Path) -> None:
    runtime = scene.runtime
    _import(runtime, tmp_path, [_row("otto"), _row("pip")], partial=False)
    assert told(runtime, TEAM_APP, "patient.roster_link_ended") == [{"patient": scene.patient_id}]
    assert told(runtime, scene.app.client_id, "patient.roster_link_ended") == [
        {"patient": scene.sub}
    ]
    # The others stayed eligible: an import that ends nothing tells nothing.
    _import(runtime, tmp_path, [_row("otto"), _row("pip")], partial=False)
    assert len(told(runtime, TEAM_APP, "patient.roster_link_ended")) == 1


def test_staff_unlinking_the_account_ends_the_link(scene: Scene) -> None:
    runtime = scene.runtime
    staff.unlink(
        runtime, scene.patient_id, reason="wrong person linked", followers=CareTeamFollowers()
    )
    assert told(runtime, scene.app.client_id, "patient.roster_link_ended") == [
        {"patient": scene.sub}
    ]
    assert told(runtime, TEAM_APP, "patient.roster_link_ended") == [{"patient": scene.patient_id}]
