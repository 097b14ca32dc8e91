"""The care team sees when the patient could not be notified of their message (sms keeps
the notices; messaging asks sms.interfaces), and the patient's own view does not."""

from __future__ import annotations

from io import StringIO

from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.utc import utcnow
from sms import delivery, preferences
from sms.backends import ConsoleSender

from .conftest import World, start_thread


def notice(client: TestClient, world: World, thread_id: str, headers: dict[str, str]) -> object:
    response = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["thread"]["patient_notice"]


def test_the_care_team_sees_a_patient_who_could_not_be_notified(
    client: TestClient, world: World
) -> None:
    with transaction(world.runtime.sessions) as db:
        # E-mail notices chosen, then the address lost its verification: no usable contact.
        prefs = preferences.defaults(world.runtime.settings, world.patients["zeb"])
        prefs.email_enabled = True
        db.add(prefs)
    thread_id = start_thread(client, world)
    assert notice(client, world, thread_id, world.app()) == "waiting"
    delivery.drain(world.runtime, ConsoleSender(out=StringIO()), clock=utcnow)
    assert notice(client, world, thread_id, world.app()) == "unreachable"
    assert notice(client, world, thread_id, world.staff()) == "unreachable"
    # The patient's own view says nothing of it.
    assert notice(client, world, thread_id, world.patient("zeb")) is None


def test_a_patients_choice_not_to_be_told_reads_not_sent_without_the_reason(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)  # zeb chose no channel (the defaults)
    delivery.drain(world.runtime, ConsoleSender(out=StringIO()), clock=utcnow)
    assert notice(client, world, thread_id, world.app()) == "not_sent"
