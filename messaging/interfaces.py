"""messaging's contract: all another package may use of messaging.

No feature package uses it today, by design: identity and sms may not import messaging
(sms learns of a new message from the notice messaging writes in sms's outbox through
:mod:`sms.interfaces`, IDs only). The composition root (carebridge.app, carebridge.cli,
carebridge.demo) builds messaging's routes, jobs and key rotation from its modules.

What messaging offers outside itself is the operator's side of care teams: which OIDC
clients act for a team and which accounts are its staff, its settings for patients who
write first, and its care relationships (started, ended, and kept in step with a roster
source after an import); and which teams' clients follow a patient
(:func:`clients_following`), which the composition root hands identity as its
``PatientFollowers``. Everything else (threads, messages, their keys and tables) is
private to messaging.

messaging itself asks identity through :mod:`identity.interfaces` and sms through
:mod:`sms.interfaces`, nothing else of theirs (pyproject.toml, [tool.importlinter]).
"""

from __future__ import annotations

from messaging.care_teams import (
    CareTeamError,
    TeamInfo,
    add_client,
    add_staff,
    create,
    list_teams,
    remove_client,
    remove_staff,
    set_retention,
    team_name_of_thread,
)
from messaging.followers import clients_following
from messaging.relationships import (
    RelationshipError,
    RelationshipView,
    RosterSync,
    operator_end,
    operator_history,
    operator_start,
    sync_roster,
)
from messaging.team_settings import (
    PatientThreads,
    TopicView,
    add_topic,
    configure,
    retire_topic,
    route_topic,
    set_roster_source,
    settings_of,
)

__all__ = [
    # Value types and domain errors
    "CareTeamError",  # an operator's request that cannot be carried out (one line)
    "PatientThreads",  # a team's settings for patient-started threads, with its topics
    "RelationshipError",  # a care-relationship request that cannot be carried out
    "RelationshipView",  # one care relationship (history included)
    "RosterSync",  # what a roster sync started and ended, per team
    "TeamInfo",  # a team, its retention, its clients and how many staff
    "TopicView",  # a topic a team offers (id, label, the pool it routes to)
    # Operations (each audited, in a transaction of its own)
    "add_client",
    "add_staff",
    "add_topic",
    # In the caller's transaction: patient ID -> the care teams' clients following it
    "clients_following",
    "configure",  # patients_may_start, auto reply, escalate_after
    "create",
    "list_teams",
    "operator_end",  # end one, with a reason (CLI)
    "operator_history",  # a team's relationships, ended ones too
    "operator_start",  # start a care relationship (CLI)
    "remove_client",
    "remove_staff",
    "retire_topic",
    "route_topic",  # the pool a topic's patient-started threads go to
    "set_retention",
    "set_roster_source",
    "settings_of",
    "sync_roster",  # after a roster import: the source's teams follow its members
    # Questions in the caller's transaction
    "team_name_of_thread",  # a thread's care team name (sms's TeamNames, as wired)
]
