"""Which patient-started threads still wait for their care team's answer.

A thread is answered once staff or the team's app wrote in it (the team's automatic first
reply does not count). The escalation job (messaging.escalation) marks a patient-started
thread unanswered past the team's ``escalate_after``; it stays *overdue* while it is
open and unanswered, and a care team's thread list shows overdue threads first.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Exists, and_, case, exists

from messaging.models import Message, Thread

# The author ID of a team's automatic first reply (messaging.threads posts it).
AUTO_REPLY_AUTHOR = "carebridge:auto-reply"


def answered() -> Exists:
    """Correlated with ``Thread``: staff or the team's app wrote in the thread."""
    return exists().where(
        Message.thread_id == Thread.id,
        Message.author_kind.in_(("staff", "app")),
        Message.author_id != AUTO_REPLY_AUTHOR,
    )


def overdue() -> ColumnElement[int]:
    """1 for an escalated thread that is open and still unanswered, else 0. CASE tests
    ``escalated_at`` first, so the EXISTS runs only for the few escalated threads."""
    return case(
        (Thread.escalated_at.is_(None), 0),
        (and_(Thread.status == "open", ~answered()), 1),
        else_=0,
    )
