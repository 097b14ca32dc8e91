"""Topics route patient-started threads to a pool.

``care_team_topic`` gains ``pool_id``: a thread a patient starts on the topic is routed to
that pool of staff roles (messaging.roles); NULL, as for every existing topic, keeps the
team-wide pool that every role sees, so nothing changes until an operator routes a topic.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07 23:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


# On SQLite the batch rebuilds care_team_topic, which no foreign key references (a
# thread's topic_id has none), so the rebuild is safe with rows on both sides.


def upgrade() -> None:
    with op.batch_alter_table("care_team_topic") as batch:
        batch.add_column(sa.Column("pool_id", sa.String(length=40), nullable=True))
        batch.create_foreign_key(
            op.f("fk_care_team_topic_pool_id_care_team_pool"),
            "care_team_pool",
            ["pool_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_care_team_topic_pool_id"), ["pool_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("care_team_topic") as batch:
        batch.drop_index(op.f("ix_care_team_topic_pool_id"))
        batch.drop_constraint(op.f("fk_care_team_topic_pool_id_care_team_pool"), type_="foreignkey")
        batch.drop_column("pool_id")
