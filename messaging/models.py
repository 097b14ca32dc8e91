"""Care teams, threads, messages and attachments (registered by carebridge.models).

Content columns (``*_encrypted``) hold AES-256-GCM ciphertexts under the thread's own
data key (messaging.crypto); the data key is stored wrapped by a keyring KEK. A thread
whose ``data_key_wrapped`` is NULL has been crypto-shredded: its rows stay as tombstones
that nothing can open.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.utc import UtcDateTime


class CareTeam(Base):
    """A provider organization, or a team inside one, registered by an operator."""

    __tablename__ = "care_team"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # An operator's label ("Northside clinic"): an organization's name, never a patient's.
    name: Mapped[str] = mapped_column(String(200))
    retention_days: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Patients write first only where the team says it reads what they send.
    patients_may_start: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Posted as the team's message right after a patient's first one (office hours, "If
    # this is an emergency, call 911"): an operator's text, never a patient's.
    auto_reply: Mapped[str | None] = mapped_column(String(2000))
    # A patient-started thread unanswered by staff this long is escalated (None: never).
    escalate_after_seconds: Mapped[int | None] = mapped_column(Integer)
    # The roster source whose eligible members are this team's patients (None: none).
    roster_source: Mapped[str | None] = mapped_column(String(64), index=True)


class CareTeamClient(Base):
    """An OIDC client acting for a care team; a client belongs to at most one team."""

    __tablename__ = "care_team_client"

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CareTeamStaff(Base):
    """A staff account of a care team: its user-bound tokens act for the team."""

    __tablename__ = "care_team_staff"

    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # What the person's job needs (messaging.roles): which pools' threads they see, and
    # whether they administer the team. A role in use cannot be removed (RESTRICT).
    role_id: Mapped[str] = mapped_column(
        ForeignKey("care_team_role.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CareTeamRole(Base):
    """A staff role of one care team (clinician, nurse, front desk, team admin...)."""

    __tablename__ = "care_team_role"
    __table_args__ = (UniqueConstraint("care_team_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    # Sees the threads of every pool of the team, not only those of its own pools.
    sees_all_pools: Mapped[bool] = mapped_column(Boolean)
    # Invites and offboards the team's staff, and is told of every break-the-glass.
    is_team_admin: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CareTeamPool(Base):
    """A pool of work of one care team: the threads routed to it are seen by the staff
    whose role works it (care_team_pool_role), and by roles that see all pools."""

    __tablename__ = "care_team_pool"
    __table_args__ = (UniqueConstraint("care_team_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CareTeamPoolRole(Base):
    """A role that works a pool."""

    __tablename__ = "care_team_pool_role"

    pool_id: Mapped[str] = mapped_column(
        ForeignKey("care_team_pool.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[str] = mapped_column(
        ForeignKey("care_team_role.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class BreakGlassGrant(Base):
    """A staff member's emergency access to one thread outside their pools, until
    ``expires_at``. The typed reason is sealed under the thread's own data key (it may
    name a patient's condition), so it is shredded with the thread."""

    __tablename__ = "break_glass_grant"
    __table_args__ = (Index(None, "account_id", "care_team_id", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[str] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    thread_id: Mapped[str] = mapped_column(ForeignKey("thread.id", ondelete="CASCADE"), index=True)
    reason_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class StaffInvite(Base):
    """A one-time enrolment link a team admin (or the operator) sent to a future staff
    member: the address and the token are kept only as keyed hashes (the keyring's
    pepper); used once, before ``expires_at``, by the account whose verified sign-in
    address is the invited one (messaging.invites)."""

    __tablename__ = "staff_invite"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    role_id: Mapped[str] = mapped_column(ForeignKey("care_team_role.id", ondelete="CASCADE"))
    email_hash: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # "account:<ID>" of the team admin, or "operator".
    invited_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    used_by: Mapped[str | None] = mapped_column(String(40))


class CareTeamTopic(Base):
    """What a patient may write to a team about; a thread a patient starts on it goes to
    the topic's pool of staff roles (messaging.roles)."""

    __tablename__ = "care_team_topic"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    care_team_id: Mapped[str] = mapped_column(
        ForeignKey("care_team.id", ondelete="CASCADE"), index=True
    )
    # An operator's label ("Prescription refill"), shown to the team's patients.
    label: Mapped[str] = mapped_column(String(100))
    # Retired topics stay (threads name them) but are offered no more.
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The pool a patient's thread on this topic is routed to (only the staff who work it,
    # and roles that see every pool, see the thread); NULL: the team-wide pool. A removed
    # pool's topics fall back to it, as its threads do.
    pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("care_team_pool.id", ondelete="SET NULL"), index=True
    )


class CareRelationship(Base):
    """A patient belongs to a care team while a row of theirs has no ``ended_at``.

    History is kept: ending sets ``ended_*`` and never deletes; a new relationship is a
    new row. At most one active row per (patient, team).
    """

    __tablename__ = "care_relationship"
    __table_args__ = (
        CheckConstraint(
            "source IN ('staff', 'app', 'operator', 'roster', 'thread', 'migration')",
            name="source",
        ),
        Index(
            "uq_care_relationship_active",
            "patient_id",
            "care_team_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
        Index(None, "care_team_id", "ended_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(40))
    care_team_id: Mapped[str] = mapped_column(ForeignKey("care_team.id", ondelete="CASCADE"))
    # How it began: staff, a team's app, the operator (CLI), a roster import, or a thread
    # the team opened; "migration" for pairs that had a thread before relationships.
    source: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(120))
    # An operator's or staff's words ("moved away", "gone from the roster"): no PHI.
    end_reason: Mapped[str | None] = mapped_column(String(200))


class Thread(Base):
    __tablename__ = "thread"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        # Inboxes list a patient's or a team's threads by last activity.
        Index(None, "patient_id", "last_message_at"),
        Index(None, "care_team_id", "last_message_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(40))
    care_team_id: Mapped[str] = mapped_column(ForeignKey("care_team.id"))
    # The pool the thread is routed to (messaging.roles); NULL: the team-wide pool that
    # every role of the team sees. A removed pool's threads fall back to it.
    pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("care_team_pool.id", ondelete="SET NULL"), index=True
    )
    subject_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    # NULL once crypto-shredded; kek_id says which KEK wrapped it (for re-wrapping).
    data_key_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_id: Mapped[str | None] = mapped_column(String(255), index=True)
    last_seq: Mapped[int] = mapped_column(Integer)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    legal_hold_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_message_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    shredded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # "team" (the care team opened it) or "patient" (a patient wrote first, on a topic).
    # Added to a table other rows reference: no CHECK and no foreign key, so SQLite adds
    # (and a downgrade drops) the columns in place instead of rebuilding the table.
    started_by: Mapped[str] = mapped_column(String(16), default="team", server_default="team")
    # A care_team_topic ID (topics are retired, never deleted).
    topic_id: Mapped[str | None] = mapped_column(String(40))
    # Set once by the escalation job: a patient-started thread unanswered too long.
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ThreadReadState(Base):
    """How far one side of a thread has read it (by message sequence number).

    Read state is per side, not per person: a care team has read a message when any of
    its staff did (issue 20), and a thread has one patient and one team. Which person read
    is in the audit log (the request's record names them), never here.
    """

    __tablename__ = "thread_read_state"

    thread_id: Mapped[str] = mapped_column(
        ForeignKey("thread.id", ondelete="CASCADE"), primary_key=True
    )
    # The side: "patient" or "team" (messaging.reads.PATIENT, TEAM).
    participant: Mapped[str] = mapped_column(String(120), primary_key=True)
    last_read_seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Message(Base):
    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("thread_id", "seq"),
        CheckConstraint("author_kind IN ('patient', 'staff', 'app')", name="author_kind"),
        # A care team's unread count: the patient's messages after the team's read
        # position (messaging.reads). Patients' messages are the few; the index holds
        # only them, so posts by the team do not pay for it.
        Index(
            "ix_message_patient_seq",
            "thread_id",
            "seq",
            postgresql_where=text("author_kind = 'patient'"),
            sqlite_where=text("author_kind = 'patient'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("thread.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    author_kind: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str] = mapped_column(String(100))
    body_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Attachment(Base):
    __tablename__ = "attachment"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    thread_id: Mapped[str] = mapped_column(ForeignKey("thread.id", ondelete="CASCADE"), index=True)
    filename_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    # Detected from the content, never taken from the upload's claim.
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    content_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
