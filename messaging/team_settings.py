"""A care team's settings for patients who write first: topics, whether patients may
start threads, the automatic first reply, the escalation delay, and the roster source
of its patients (operator actions, audited, each in a transaction of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.ids import new_id
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from messaging.care_teams import CareTeamError
from messaging.models import CareTeam, CareTeamTopic
from messaging.roles import pool_of_team

MAX_LABEL = 100
MAX_AUTO_REPLY = 2000
# An escalation sooner than a minute is a typo; later than 30 days is no escalation.
ESCALATE_MIN = timedelta(minutes=1)
ESCALATE_MAX = timedelta(days=30)


@dataclass(frozen=True)
class TopicView:
    id: str
    label: str
    # The pool its patients' threads are routed to; None: the team-wide pool.
    pool_id: str | None = None


@dataclass(frozen=True)
class PatientThreads:
    patients_may_start: bool
    auto_reply: str | None
    escalate_after: timedelta | None
    roster_source: str | None
    topics: list[TopicView]


def _audit(db: Session, actor: str, action: str, target: str) -> None:
    audit.append(db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=target)


def _team(db: Session, team_id: str) -> CareTeam:
    team = db.get(CareTeam, team_id)
    if team is None:
        raise CareTeamError(f"no care team {team_id}")
    return team


def topics_of(db: Session, team_id: str) -> list[TopicView]:
    """The topics a team offers now (not the retired ones), in the order they were added."""
    query = (
        select(CareTeamTopic)
        .where(CareTeamTopic.care_team_id == team_id, CareTeamTopic.retired_at.is_(None))
        .order_by(CareTeamTopic.created_at, CareTeamTopic.id)
    )
    return [TopicView(topic.id, topic.label, topic.pool_id) for topic in db.scalars(query)]


def settings_of(runtime: Runtime, team_id: str) -> PatientThreads:
    with runtime.sessions() as db:
        team = _team(db, team_id)
        seconds = team.escalate_after_seconds
        return PatientThreads(
            team.patients_may_start,
            team.auto_reply,
            None if seconds is None else timedelta(seconds=seconds),
            team.roster_source,
            topics_of(db, team_id),
        )


def configure(
    runtime: Runtime,
    team_id: str,
    *,
    actor: str,
    patients_may_start: bool | None = None,
    auto_reply: str | None = None,
    escalate_after: timedelta | None = None,
    clear_escalation: bool = False,
) -> None:
    """Change what is given (None: unchanged; an empty auto reply removes it)."""
    if auto_reply is not None and (len(auto_reply) > MAX_AUTO_REPLY or "\x00" in auto_reply):
        raise CareTeamError(f"the automatic reply must be at most {MAX_AUTO_REPLY} characters")
    if escalate_after is not None and not ESCALATE_MIN <= escalate_after <= ESCALATE_MAX:
        raise CareTeamError("escalate-after must be from 1 minute to 30 days")
    with transaction(runtime.sessions) as db:
        team = _team(db, team_id)
        if patients_may_start is not None:
            team.patients_may_start = patients_may_start
        if auto_reply is not None:
            team.auto_reply = auto_reply.strip() or None
        if escalate_after is not None:
            team.escalate_after_seconds = int(escalate_after.total_seconds())
        if clear_escalation:
            team.escalate_after_seconds = None
        _audit(db, actor, "messaging.care_team.patient_threads", f"care_team:{team_id}")


def set_roster_source(runtime: Runtime, team_id: str, source: str | None, *, actor: str) -> None:
    """The roster source whose eligible members are the team's patients (None: none)."""
    if source is not None and not 1 <= len(source) <= 64:
        raise CareTeamError("the roster source must be 1 to 64 characters")
    with transaction(runtime.sessions) as db:
        _team(db, team_id).roster_source = source
        _audit(db, actor, "messaging.care_team.roster_source", f"care_team:{team_id}")


def _check_pool(db: Session, team_id: str, pool_id: str | None) -> None:
    if pool_id is not None and not pool_of_team(db, team_id, pool_id):
        raise CareTeamError(f"no pool {pool_id} in {team_id}")


def add_topic(
    runtime: Runtime, team_id: str, label: str, *, actor: str, pool_id: str | None = None
) -> str:
    """A topic whose patient-started threads go to ``pool_id`` (None: the team-wide pool)."""
    label = " ".join(label.split())
    if not 1 <= len(label) <= MAX_LABEL:
        raise CareTeamError(f"the label must be 1 to {MAX_LABEL} characters")
    topic_id = new_id("top")
    with transaction(runtime.sessions) as db:
        _team(db, team_id)
        _check_pool(db, team_id, pool_id)
        db.add(
            CareTeamTopic(
                id=topic_id,
                care_team_id=team_id,
                label=label,
                pool_id=pool_id,
                created_at=utcnow(),
            )
        )
        db.flush()
        _audit(db, actor, "messaging.care_team.add_topic", f"topic:{topic_id}")
    return topic_id


def retire_topic(runtime: Runtime, team_id: str, topic_id: str, *, actor: str) -> None:
    """Offer a topic no more; threads on it keep naming it."""
    with transaction(runtime.sessions) as db:
        topic = db.get(CareTeamTopic, topic_id)
        if topic is None or topic.care_team_id != team_id or topic.retired_at is not None:
            raise CareTeamError(f"no topic {topic_id} offered by {team_id}")
        topic.retired_at = utcnow()
        _audit(db, actor, "messaging.care_team.retire_topic", f"topic:{topic_id}")


def route_topic(
    runtime: Runtime, team_id: str, topic_id: str, pool_id: str | None, *, actor: str
) -> None:
    """Route the topic's future patient-started threads to ``pool_id`` (None: team-wide);
    threads already started keep the pool they were routed to."""
    with transaction(runtime.sessions) as db:
        topic = db.get(CareTeamTopic, topic_id)
        if topic is None or topic.care_team_id != team_id:
            raise CareTeamError(f"no topic {topic_id} in {team_id}")
        _check_pool(db, team_id, pool_id)
        topic.pool_id = pool_id
        _audit(db, actor, "messaging.care_team.route_topic", f"topic:{topic_id}")
