"""The audit log chained in batches: records are written without the chain lock and
linked afterwards (``link``); PostgreSQL numbers them from a sequence.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 07:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("link", sa.BigInteger(), nullable=True))
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=True)
    # Every record so far was chained in seq order.
    op.execute("UPDATE audit_log SET link = seq")
    with op.batch_alter_table("audit_log") as batch:
        batch.create_unique_constraint(op.f("uq_audit_log_link"), ["link"])
    op.create_index(
        "ix_audit_log_unchained",
        "audit_log",
        ["seq"],
        postgresql_where=sa.text("link IS NULL"),
        sqlite_where=sa.text("link IS NULL"),
    )
    if postgresql:
        op.execute("CREATE SEQUENCE audit_log_seq OWNED BY audit_log.seq")
        # Also the column default, for inserts written without SQLAlchemy's help
        # (carebridge.db.insert_together).
        op.execute("ALTER TABLE audit_log ALTER COLUMN seq SET DEFAULT nextval('audit_log_seq')")
        op.execute(
            "SELECT setval('audit_log_seq', COALESCE(MAX(seq), 0) + 1, false) FROM audit_log"
        )


def downgrade() -> None:
    # Chain every record first (`carebridge audit verify` does): unchained rows cannot go back.
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("ALTER TABLE audit_log ALTER COLUMN seq DROP DEFAULT")
        op.execute("DROP SEQUENCE audit_log_seq")
        # The old chain is ordered by seq: make seq the link again (in two steps, as the
        # primary key is checked row by row).
        op.execute("UPDATE audit_log SET seq = -link")
        op.execute("UPDATE audit_log SET seq = -seq")
    op.drop_index("ix_audit_log_unchained", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint(op.f("uq_audit_log_link"), type_="unique")
        batch.drop_column("link")
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
