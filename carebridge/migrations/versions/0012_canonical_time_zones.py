"""Patients' time zones stored before only canonical names were taken become canonical.

An alias (``US/Eastern``, ``Asia/Calcutta``, ``Etc/UTC``, ``GMT``) becomes the canonical
name of the same zone, by tzdata's own links (carebridge.time_zones.canonical_name): the
same clock, so nobody's quiet hours move. A name no canonical zone matches (``localtime``,
the server's clock; ``Factory``; a fixed offset such as ``Etc/GMT+5``; anything unknown)
becomes the deployment's default, ``CAREBRIDGE_NOTIFY_TIME_ZONE``, as for a patient who
never chose: logged with the number of patients, whose quiet hours may move.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 09:00:00.000000
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

from carebridge import time_zones
from carebridge.settings import Settings

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

log = logging.getLogger("carebridge.migrate")


def upgrade() -> None:
    settings: Settings | None = context.config.attributes.get("settings")
    default = str(
        settings.notify_time_zone if settings else Settings.model_fields["notify_time_zone"].default
    )
    prefs = sa.table("notification_preferences", sa.column("time_zone", sa.String))
    bind = op.get_bind()
    for name in bind.execute(sa.select(prefs.c.time_zone).distinct()).scalars().all():
        zone = time_zones.canonical_name(name)
        if zone == name:
            continue
        update = prefs.update().where(prefs.c.time_zone == name)
        moved = bind.execute(update.values(time_zone=zone or default)).rowcount
        if zone is None:
            log.warning(
                "time zone %r names no place: %d patients now have the default, %s",
                name[:64],
                moved,
                default,
            )


def downgrade() -> None:
    # Nothing to undo: the canonical name is the same zone; a name of no place is gone.
    pass
