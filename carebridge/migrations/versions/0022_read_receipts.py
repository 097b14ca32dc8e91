"""Read receipts (issue 20): read state per side of a thread, not per person.

A care team has read a message when any of its staff did, so ``thread_read_state`` keeps
one row for the patient's side ("patient") and one for the team's ("team"). The team's
position starts at the furthest any staff member had read; an app's own token reads for
no person, so its rows go. ``ix_message_patient_seq`` (the patient's messages only) makes
a team's unread count cheap.

Downgrade gives every staff member of the thread's team the team's position, and the
patient's row its patient ID again.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 22:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_PATIENT_ONLY = sa.text("author_kind = 'patient'")


def upgrade() -> None:
    op.execute(
        "INSERT INTO thread_read_state (thread_id, participant, last_read_seq, updated_at)"
        " SELECT thread_id, 'team', MAX(last_read_seq), MAX(updated_at)"
        " FROM thread_read_state WHERE participant LIKE 'account:%' GROUP BY thread_id"
    )
    op.execute(
        "DELETE FROM thread_read_state"
        " WHERE participant LIKE 'account:%' OR participant LIKE 'app:%'"
    )
    op.execute(
        "UPDATE thread_read_state SET participant = 'patient' WHERE participant LIKE 'patient:%'"
    )
    op.create_index(
        "ix_message_patient_seq",
        "message",
        ["thread_id", "seq"],
        postgresql_where=_PATIENT_ONLY,
        sqlite_where=_PATIENT_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_message_patient_seq", table_name="message")
    op.execute(
        "INSERT INTO thread_read_state (thread_id, participant, last_read_seq, updated_at)"
        " SELECT r.thread_id, 'account:' || s.account_id, r.last_read_seq, r.updated_at"
        " FROM thread_read_state r JOIN thread t ON t.id = r.thread_id"
        " JOIN care_team_staff s ON s.care_team_id = t.care_team_id"
        " WHERE r.participant = 'team'"
    )
    op.execute("DELETE FROM thread_read_state WHERE participant = 'team'")
    op.execute(
        "UPDATE thread_read_state SET participant = 'patient:' ||"
        " (SELECT patient_id FROM thread WHERE thread.id = thread_read_state.thread_id)"
        " WHERE participant = 'patient'"
    )
