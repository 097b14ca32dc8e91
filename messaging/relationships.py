"""Care relationships: which care teams a patient belongs to (docs/architecture.md).

A relationship gates both directions: a team writes only to its patients, a patient
only to their teams. Started by staff or a team's app (API), the operator (CLI), a roster
import (a team per roster source), or a team opening a thread with a patient who has
none; ended the same ways. Ending keeps the row (history); a new relationship is a new
row. An ENDED relationship is not started again by opening a thread: staff re-create it
explicitly. Every start and end is audited, both ways (target names patient and team).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.i18n import N_
from carebridge.ids import new_id
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.interfaces import Eligibility, eligibility
from messaging.access import RefusedError
from messaging.models import CareRelationship, CareTeam

SOURCES = ("staff", "app", "operator", "roster", "thread", "migration")
MAX_REASON = 200
NO_ACTIVE = N_("There is no active care relationship between this patient and the care team.")


class RelationshipError(Exception):
    """An operator's request that cannot be carried out; the message is one line."""


@dataclass(frozen=True)
class RelationshipView:
    id: str
    patient_id: str
    care_team_id: str
    source: str
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None


def _view(row: CareRelationship) -> RelationshipView:
    return RelationshipView(
        row.id,
        row.patient_id,
        row.care_team_id,
        row.source,
        row.created_by,
        row.created_at,
        row.ended_at,
        row.ended_by,
        row.end_reason,
    )


def _target(patient_id: str, team_id: str) -> str:
    return f"care_relationship:{team_id}:{patient_id}"


def _audit(db: Session, actor: str, action: str, patient_id: str, team_id: str) -> None:
    audit.append(
        db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=_target(patient_id, team_id)
    )


def active(db: Session, patient_id: str, team_id: str) -> CareRelationship | None:
    query = select(CareRelationship).where(
        CareRelationship.patient_id == patient_id,
        CareRelationship.care_team_id == team_id,
        CareRelationship.ended_at.is_(None),
    )
    return db.execute(query).scalar_one_or_none()


def ever(db: Session, patient_id: str, team_id: str) -> bool:
    query = select(CareRelationship.id).where(
        CareRelationship.patient_id == patient_id, CareRelationship.care_team_id == team_id
    )
    return db.execute(query.limit(1)).first() is not None


def start(
    db: Session, *, patient_id: str, team_id: str, source: str, actor: str
) -> tuple[RelationshipView, bool]:
    """The pair's active relationship, started now if there was none (True if started).

    Refused (RefusedError 422) for a patient ID that is not on the roster, 409 for one
    no longer eligible: a team takes on only patients it could write to.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    found = active(db, patient_id, team_id)
    if found is not None:
        return _view(found), False
    standing = eligibility(db, patient_id)
    if standing is Eligibility.UNKNOWN:
        raise RefusedError(422, N_("No such patient."))
    if standing is Eligibility.INELIGIBLE:
        raise RefusedError(
            409, N_("This patient is no longer eligible: no new care relationship."), denied=True
        )
    row = CareRelationship(
        id=new_id("rel"),
        patient_id=patient_id,
        care_team_id=team_id,
        source=source,
        created_by=actor,
        created_at=utcnow(),
    )
    db.add(row)
    db.flush()
    _audit(db, actor, "messaging.care_relationship.start", patient_id, team_id)
    return _view(row), True


def end(db: Session, *, patient_id: str, team_id: str, actor: str, reason: str) -> RelationshipView:
    """End the pair's active relationship (404 if there is none). Threads stay readable;
    neither side can write in them until a new relationship is started."""
    reason = " ".join(reason.split())
    if not 1 <= len(reason) <= MAX_REASON or "\x00" in reason:
        raise RefusedError(400, f"The reason must be 1 to {MAX_REASON} characters.")
    found = active(db, patient_id, team_id)
    if found is None:
        raise RefusedError(404, NO_ACTIVE)
    found.ended_at = utcnow()
    found.ended_by = actor
    found.end_reason = reason
    db.flush()
    _audit(db, actor, "messaging.care_relationship.end", patient_id, team_id)
    return _view(found)


def history(db: Session, *, team_id: str, patient_id: str | None = None) -> list[RelationshipView]:
    """A team's relationships (or one patient's with it), newest first, ended ones too."""
    query = select(CareRelationship).where(CareRelationship.care_team_id == team_id)
    if patient_id is not None:
        query = query.where(CareRelationship.patient_id == patient_id)
    query = query.order_by(CareRelationship.created_at.desc(), CareRelationship.id)
    return [_view(row) for row in db.scalars(query)]


def team_ids_of(db: Session, patient_id: str) -> list[str]:
    query = select(CareRelationship.care_team_id).where(
        CareRelationship.patient_id == patient_id, CareRelationship.ended_at.is_(None)
    )
    return list(db.scalars(query))


# Operator (CLI) and roster import: each in a transaction of its own.


def _team(db: Session, team_id: str) -> CareTeam:
    team = db.get(CareTeam, team_id)
    if team is None:
        raise RelationshipError(f"no care team {team_id}")
    return team


def operator_start(runtime: Runtime, team_id: str, patient_id: str, *, actor: str) -> bool:
    try:
        with transaction(runtime.sessions) as db:
            _team(db, team_id)
            return start(
                db, patient_id=patient_id, team_id=team_id, source="operator", actor=actor
            )[1]
    except RefusedError as exc:
        raise RelationshipError(exc.detail) from None


def operator_end(
    runtime: Runtime, team_id: str, patient_id: str, *, reason: str, actor: str
) -> None:
    try:
        with transaction(runtime.sessions) as db:
            _team(db, team_id)
            end(db, patient_id=patient_id, team_id=team_id, actor=actor, reason=reason)
    except RefusedError as exc:
        raise RelationshipError(exc.detail) from None


def operator_history(
    runtime: Runtime, team_id: str, patient_id: str | None = None
) -> list[RelationshipView]:
    with runtime.sessions() as db:
        _team(db, team_id)
        return history(db, team_id=team_id, patient_id=patient_id)


@dataclass(frozen=True)
class RosterSync:
    team_id: str
    started: int
    ended: int


def sync_roster(
    runtime: Runtime, source: str, eligible: Iterable[str], *, actor: str
) -> list[RosterSync]:
    """After a roster import of ``source``: every team fed by that source has exactly its
    eligible members as roster relationships. New members start one (unless another way
    already did); rows removed or no longer eligible end the roster's relationships (a
    relationship staff started stays: staff end it themselves)."""
    members = frozenset(eligible)
    results = []
    with transaction(runtime.sessions) as db:
        teams = db.scalars(select(CareTeam.id).where(CareTeam.roster_source == source)).all()
        for team_id in teams:
            current = {
                row.patient_id: row
                for row in db.scalars(
                    select(CareRelationship).where(
                        CareRelationship.care_team_id == team_id,
                        CareRelationship.ended_at.is_(None),
                    )
                )
            }
            started = ended = 0
            for patient_id in sorted(members - current.keys()):
                start(db, patient_id=patient_id, team_id=team_id, source="roster", actor=actor)
                started += 1
            for patient_id, row in sorted(current.items()):
                if row.source == "roster" and patient_id not in members:
                    end(
                        db,
                        patient_id=patient_id,
                        team_id=team_id,
                        actor=actor,
                        reason=f"no longer on roster {source}",
                    )
                    ended += 1
            results.append(RosterSync(team_id, started, ended))
    return results
