"""Notifications: the outbox, delivery attempts, contact points, preferences, opt-outs,
secure links and the shared per-sender rate limit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("contact_point_id", sa.String(length=40), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.String(length=40), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_status", sa.String(length=16), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
    )
    op.create_index(
        op.f("ix_notification_next_attempt_at"), "notification", ["next_attempt_at"], unique=False
    )
    op.create_index(
        op.f("ix_notification_patient_id"), "notification", ["patient_id"], unique=False
    )
    op.create_index(op.f("ix_notification_state"), "notification", ["state"], unique=False)
    op.create_table(
        "send_attempt",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_sid", sa.String(length=64), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_by", sa.String(length=24), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notification.id"],
            name=op.f("fk_send_attempt_notification_id_notification"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_attempt")),
    )
    op.create_index(
        op.f("ix_send_attempt_notification_id"), "send_attempt", ["notification_id"], unique=False
    )
    op.create_index(
        op.f("ix_send_attempt_provider_sid"), "send_attempt", ["provider_sid"], unique=False
    )
    op.create_table(
        "contact_point",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("number_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("number_hash", sa.String(length=64), nullable=False),
        sa.Column("last_digits", sa.String(length=4), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sms_usable", sa.Boolean(), nullable=False),
        sa.Column("voice_usable", sa.Boolean(), nullable=False),
        sa.Column("unusable_code", sa.Integer(), nullable=True),
        sa.Column("code_hash", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("code_failures", sa.Integer(), nullable=False),
        sa.Column("codes_sent", sa.Integer(), nullable=False),
        sa.Column("codes_window_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_point")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_contact_point_patient_id")),
    )
    op.create_index(
        op.f("ix_contact_point_number_hash"), "contact_point", ["number_hash"], unique=False
    )
    op.create_table(
        "sms_opt_out",
        sa.Column("number_hash", sa.String(length=64), nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("number_hash", name=op.f("pk_sms_opt_out")),
    )
    op.create_table(
        "notification_preferences",
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("sms_enabled", sa.Boolean(), nullable=False),
        sa.Column("sms_opted_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voice_enabled", sa.Boolean(), nullable=False),
        sa.Column("voicemail_enabled", sa.Boolean(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=False),
        sa.Column("quiet_end", sa.String(length=5), nullable=False),
        sa.Column("daily_cap", sa.Integer(), nullable=False),
        sa.Column("weekly_cap", sa.Integer(), nullable=False),
        sa.Column("insecure_consent", sa.Boolean(), nullable=False),
        sa.Column("insecure_consent_version", sa.String(length=32), nullable=True),
        sa.Column("insecure_consent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_notification_preferences")),
    )
    op.create_table(
        "secure_link",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secure_link")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_secure_link_token_hash")),
    )
    op.create_index(op.f("ix_secure_link_expires_at"), "secure_link", ["expires_at"], unique=False)
    op.create_table(
        "secure_link_visit",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cookie_hash", sa.String(length=64), nullable=False),
        sa.Column("link_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["secure_link.id"],
            name=op.f("fk_secure_link_visit_link_id_secure_link"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secure_link_visit")),
        sa.UniqueConstraint("cookie_hash", name=op.f("uq_secure_link_visit_cookie_hash")),
    )
    op.create_index(
        op.f("ix_secure_link_visit_expires_at"), "secure_link_visit", ["expires_at"], unique=False
    )
    op.create_table(
        "sms_sender_slot",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sender", name=op.f("pk_sms_sender_slot")),
    )


def downgrade() -> None:
    op.drop_table("sms_sender_slot")
    op.drop_index(op.f("ix_secure_link_visit_expires_at"), table_name="secure_link_visit")
    op.drop_table("secure_link_visit")
    op.drop_index(op.f("ix_secure_link_expires_at"), table_name="secure_link")
    op.drop_table("secure_link")
    op.drop_table("notification_preferences")
    op.drop_table("sms_opt_out")
    op.drop_index(op.f("ix_contact_point_number_hash"), table_name="contact_point")
    op.drop_table("contact_point")
    op.drop_index(op.f("ix_send_attempt_provider_sid"), table_name="send_attempt")
    op.drop_index(op.f("ix_send_attempt_notification_id"), table_name="send_attempt")
    op.drop_table("send_attempt")
    op.drop_index(op.f("ix_notification_state"), table_name="notification")
    op.drop_index(op.f("ix_notification_patient_id"), table_name="notification")
    op.drop_index(op.f("ix_notification_next_attempt_at"), table_name="notification")
    op.drop_table("notification")
