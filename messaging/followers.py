"""Which care teams' clients follow a patient, for identity's events (account disabled or
deleted, roster link ended): the clients of every team with a thread with the patient,
the same clients messaging's own events go to (messaging.events). Offered through
messaging.interfaces; the composition root hands it to identity.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from messaging.models import CareTeamClient, Thread

# IDs per IN list: a roster import may end many patients' links at once.
_CHUNK = 500


def clients_following(db: Session, patient_ids: Collection[str]) -> dict[str, list[str]]:
    """patient ID -> the client IDs of the care teams with a thread with the patient."""
    found: dict[str, list[str]] = {}
    ids = sorted(set(patient_ids))
    for start in range(0, len(ids), _CHUNK):
        rows = db.execute(
            select(Thread.patient_id, CareTeamClient.client_id)
            .join(CareTeamClient, CareTeamClient.care_team_id == Thread.care_team_id)
            .where(Thread.patient_id.in_(ids[start : start + _CHUNK]))
            .distinct()
            .order_by(Thread.patient_id, CareTeamClient.client_id)
        ).all()
        for patient_id, client_id in rows:
            found.setdefault(patient_id, []).append(client_id)
    return found
