"""Staff roles and pools, and break-the-glass grants (issue 20): ``care_team_role``,
``care_team_pool``, ``care_team_pool_role``, ``break_glass_grant``, ``staff_invite``, ``role_id`` on
``care_team_staff`` and ``pool_id`` on ``thread``.

Every existing team gets the default roles (messaging.roles.DEFAULT_ROLES) and, for its
existing staff, a role that sees every pool: nothing changes for them until a team admin
gives them another one. Existing threads have no pool (the team-wide pool everyone sees).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 22:30:00.000000
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

# As messaging.roles has them at this revision (a migration never imports the models).
_DEFAULTS = (
    ("clinician", False, False),
    ("nurse", False, False),
    ("front desk", False, False),
    ("team admin", True, True),
)
MIGRATED_ROLE = "staff (all pools)"


def _id() -> str:
    return f"role_{secrets.token_urlsafe(16)}"


def upgrade() -> None:
    op.create_table(
        "care_team_role",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("sees_all_pools", sa.Boolean(), nullable=False),
        sa.Column("is_team_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_team_role_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_team_role")),
        sa.UniqueConstraint("care_team_id", "name", name=op.f("uq_care_team_role_care_team_id")),
    )
    op.create_index(
        op.f("ix_care_team_role_care_team_id"), "care_team_role", ["care_team_id"], unique=False
    )
    op.create_table(
        "care_team_pool",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_team_pool_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_team_pool")),
        sa.UniqueConstraint("care_team_id", "name", name=op.f("uq_care_team_pool_care_team_id")),
    )
    op.create_index(
        op.f("ix_care_team_pool_care_team_id"), "care_team_pool", ["care_team_id"], unique=False
    )
    op.create_table(
        "care_team_pool_role",
        sa.Column("pool_id", sa.String(length=40), nullable=False),
        sa.Column("role_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["care_team_pool.id"],
            name=op.f("fk_care_team_pool_role_pool_id_care_team_pool"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["care_team_role.id"],
            name=op.f("fk_care_team_pool_role_role_id_care_team_role"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pool_id", "role_id", name=op.f("pk_care_team_pool_role")),
    )
    op.create_index(
        op.f("ix_care_team_pool_role_role_id"), "care_team_pool_role", ["role_id"], unique=False
    )
    op.create_table(
        "break_glass_grant",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("reason_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_break_glass_grant_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_break_glass_grant_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["thread.id"],
            name=op.f("fk_break_glass_grant_thread_id_thread"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass_grant")),
    )
    op.create_index(
        op.f("ix_break_glass_grant_account_id"),
        "break_glass_grant",
        ["account_id", "care_team_id", "expires_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_break_glass_grant_care_team_id"),
        "break_glass_grant",
        ["care_team_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_break_glass_grant_thread_id"), "break_glass_grant", ["thread_id"], unique=False
    )
    op.create_table(
        "staff_invite",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("role_id", sa.String(length=40), nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("invited_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_staff_invite_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["care_team_role.id"],
            name=op.f("fk_staff_invite_role_id_care_team_role"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_invite")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_invite_token_hash")),
    )
    op.create_index(
        op.f("ix_staff_invite_care_team_id"), "staff_invite", ["care_team_id"], unique=False
    )
    with op.batch_alter_table("thread") as batch:
        batch.add_column(sa.Column("pool_id", sa.String(length=40), nullable=True))
        batch.create_foreign_key(
            op.f("fk_thread_pool_id_care_team_pool"),
            "care_team_pool",
            ["pool_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_thread_pool_id"), ["pool_id"], unique=False)
    with op.batch_alter_table("care_team_staff") as batch:
        batch.add_column(sa.Column("role_id", sa.String(length=40), nullable=True))
    _give_roles()
    with op.batch_alter_table("care_team_staff") as batch:
        batch.alter_column("role_id", existing_type=sa.String(length=40), nullable=False)
        batch.create_foreign_key(
            op.f("fk_care_team_staff_role_id_care_team_role"),
            "care_team_role",
            ["role_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch.create_index(op.f("ix_care_team_staff_role_id"), ["role_id"], unique=False)


def _give_roles() -> None:
    bind = op.get_bind()
    roles = sa.table(
        "care_team_role",
        sa.column("id", sa.String),
        sa.column("care_team_id", sa.String),
        sa.column("name", sa.String),
        sa.column("sees_all_pools", sa.Boolean),
        sa.column("is_team_admin", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    staff = sa.table("care_team_staff", sa.column("care_team_id"), sa.column("role_id"))
    now = datetime.now(UTC)
    teams = [row[0] for row in bind.execute(sa.text("SELECT id FROM care_team"))]
    with_staff = {
        row[0] for row in bind.execute(sa.text("SELECT DISTINCT care_team_id FROM care_team_staff"))
    }
    for team in teams:
        rows = [
            {
                "id": _id(),
                "care_team_id": team,
                "name": name,
                "sees_all_pools": sees_all,
                "is_team_admin": admin,
                "created_at": now,
            }
            for name, sees_all, admin in _DEFAULTS
        ]
        if team in with_staff:
            migrated = _id()
            rows.append(
                {
                    "id": migrated,
                    "care_team_id": team,
                    "name": MIGRATED_ROLE,
                    "sees_all_pools": True,
                    "is_team_admin": False,
                    "created_at": now,
                }
            )
            bind.execute(
                staff.update().where(staff.c.care_team_id == team).values(role_id=migrated)
            )
        bind.execute(roles.insert(), rows)


def downgrade() -> None:
    with op.batch_alter_table("care_team_staff") as batch:
        batch.drop_index(op.f("ix_care_team_staff_role_id"))
        batch.drop_constraint(op.f("fk_care_team_staff_role_id_care_team_role"), type_="foreignkey")
        batch.drop_column("role_id")
    with op.batch_alter_table("thread") as batch:
        batch.drop_index(op.f("ix_thread_pool_id"))
        batch.drop_constraint(op.f("fk_thread_pool_id_care_team_pool"), type_="foreignkey")
        batch.drop_column("pool_id")
    op.drop_table("staff_invite")
    op.drop_table("break_glass_grant")
    op.drop_table("care_team_pool_role")
    op.drop_table("care_team_pool")
    op.drop_table("care_team_role")
