"""messaging's contract: all another package may use of messaging.

No feature package uses it today, by design: identity and sms may not import messaging
(sms learns of a new message from the notice messaging writes in sms's outbox through
:mod:`sms.interfaces`, IDs only). The composition root (carebridge.app, carebridge.cli,
carebridge.demo) builds messaging's routes, jobs and key rotation from its modules.

What messaging offers outside itself is the operator's side of care teams: which OIDC
clients act for a team and which accounts are its staff; and which teams' clients follow
a patient (:func:`clients_following`), which the composition root hands identity as its
``PatientFollowers``. Everything else (threads,
messages, their keys and tables) is private to messaging.

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
)
from messaging.followers import clients_following

__all__ = [
    # Value types and domain errors
    "CareTeamError",  # an operator's request that cannot be carried out (one line)
    "TeamInfo",  # a team, its retention, its clients and how many staff
    # Operations (each audited, in a transaction of its own)
    "add_client",
    "add_staff",
    # In the caller's transaction: patient ID -> the care teams' clients following it
    "clients_following",
    "create",
    "list_teams",
    "remove_client",
    "remove_staff",
    "set_retention",
]
