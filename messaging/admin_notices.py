"""E-mail a care team's admins: the one way messaging tells them something happened.

Break the glass (messaging.break_glass) and escalation (messaging.escalation) both
notify every team admin (a role with ``is_team_admin``, messaging.roles) who has a
verified address, through the outbox in the caller's transaction: the notice goes if and
only if what it reports commits. Callers pass generic text only: no patient, thread,
subject, topic or reason (no PHI by e-mail; a topic label such as "Mental health" can
reveal a condition). The notice sends the admin to their team's own view for the rest.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from carebridge.mail import OutboxEmailSender
from carebridge.runtime import Runtime
from identity.interfaces import verified_email_of
from messaging import roles


def email_team_admins(
    db: Session, runtime: Runtime, team_id: str, *, subject: str, text: str
) -> int:
    """Queue ``subject``/``text`` to each of the team's admins; returns how many."""
    sender = OutboxEmailSender(runtime)
    sent = 0
    for account_id in roles.team_admins(db, team_id):
        address = verified_email_of(db, runtime.keyring, account_id)
        if address is not None:
            sender.send_email(db, to=address, subject=subject, text=text)
            sent += 1
    return sent
