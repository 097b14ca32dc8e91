"""Which care teams' clients follow a patient, for identity's events (account disabled or
deleted, roster link ended): the clients of every team with an active care relationship
with the patient or a thread with them (its threads stay readable after the relationship
ends), the teams messaging's own events go to (messaging.events). Offered through
messaging.interfaces; the composition root hands it to identity.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from messaging.models import CareRelationship, CareTeamClient, Thread

# IDs per IN list: a roster import may end many patients' links at once.
_CHUNK = 500


def clients_following(db: Session, patient_ids: Collection[str]) -> dict[str, list[str]]:
    """patient ID -> the client IDs of the care teams the patient has an active care
    relationship or a thread with."""
    found: dict[str, list[str]] = {}
    ids = sorted(set(patient_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        teams = union(
            select(Thread.patient_id, Thread.care_team_id).where(Thread.patient_id.in_(chunk)),
            select(CareRelationship.patient_id, CareRelationship.care_team_id).where(
                CareRelationship.patient_id.in_(chunk), CareRelationship.ended_at.is_(None)
            ),
        ).subquery()
        rows = db.execute(
            select(teams.c.patient_id, CareTeamClient.client_id)
            .join(CareTeamClient, CareTeamClient.care_team_id == teams.c.care_team_id)
            .distinct()
            .order_by(teams.c.patient_id, CareTeamClient.client_id)
        ).all()
        for patient_id, client_id in rows:
            found.setdefault(patient_id, []).append(client_id)
    return found
