"""A small world for messaging tests: a roster of patients with accounts, a care team with
its provider app and a staff member, and access tokens shaped like the provider's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import subjects
from messaging import care_teams
from tests.identity import factories
from tests.identity.roster_helpers import import_roster, link
from tests.tokens import mint

PROVIDER_APP = "provider-app"
OTHER_APP = "other-team-app"
PATIENT_APP = "patient-app"
BOTH = "messaging.read messaging.write"


@dataclass
class World:
    runtime: Runtime
    patients: dict[str, str]  # name -> patient ID
    accounts: dict[str, str] = field(default_factory=dict)  # name -> account ID
    team: str = ""
    other_team: str = ""
    staff_account: str = ""

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def app(self, client_id: str = PROVIDER_APP, scope: str = BOTH) -> dict[str, str]:
        """A care team's app acting as itself (client credentials)."""
        return self.headers(mint(self.runtime, sub=client_id, client_id=client_id, scope=scope))

    def patient(self, name: str, scope: str = BOTH) -> dict[str, str]:
        """The named patient's user-bound token from the patient app."""
        subject = f"sub-{name}"
        return self.headers(
            mint(self.runtime, sub=subject, client_id=PATIENT_APP, scope=scope, auth_time=0)
        )

    def staff(self, scope: str = BOTH, subject: str = "staff-sub") -> dict[str, str]:
        return self.headers(
            mint(self.runtime, sub=subject, client_id=PROVIDER_APP, scope=scope, auth_time=0)
        )


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


def build_world(runtime: Runtime, tmp_path: Path) -> World:
    """The world, on any runtime (tests/carebridge/test_database_stalls.py builds one on a private
    server's)."""
    patients = import_roster(runtime, tmp_path)
    found = World(runtime, patients)
    for name, patient_id in patients.items():
        if name == "pip":
            continue  # pip has no account yet: threads wait for them
        account_id = factories.account(runtime)
        link(runtime, account_id, patient_id)
        found.accounts[name] = account_id
        with transaction(runtime.sessions) as db:
            subjects.record(db, client_id=PATIENT_APP, subject=f"sub-{name}", account_id=account_id)
    found.team = care_teams.create(runtime, name="Northside clinic", retention_days=30, actor="t")
    care_teams.add_client(runtime, found.team, PROVIDER_APP, actor="t")
    found.other_team = care_teams.create(runtime, name="Other clinic", retention_days=30, actor="t")
    care_teams.add_client(runtime, found.other_team, OTHER_APP, actor="t")
    found.staff_account = factories.account(runtime)
    care_teams.add_staff(runtime, found.team, found.staff_account, actor="t")
    with transaction(runtime.sessions) as db:
        subjects.record(
            db, client_id=PROVIDER_APP, subject="staff-sub", account_id=found.staff_account
        )
    return found


def start_thread(
    client: TestClient,
    world: World,
    patient: str = "zeb",
    *,
    subject: str = "Your lab results",
    body: str = "Everything looks fine.",
) -> str:
    response = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": world.patients[patient], "subject": subject, "body": body},
        headers=world.app(),
    )
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["thread"]["id"]
    return thread_id


def patient_browser(client: TestClient, world: World, name: str) -> None:
    """Sign ``client`` in as the named patient, second factor done."""
    factories.totp(world.runtime, world.accounts[name])
    factories.sign_in(client, world.runtime, world.accounts[name], level=2)
