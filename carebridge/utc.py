"""Time in UTC: the one clock, and the column type every stored moment goes through.

Every moment the service stores is UTC. PostgreSQL keeps it as ``timestamp with time
zone`` and hands it back aware; SQLite keeps the wall-clock digits only and hands them
back naive. :class:`UtcDateTime` is that same column type (the schema does not change)
read back aware in UTC on both, so no caller compares a naive moment with an aware one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` whose values are aware UTC datetimes both ways.

    An aware value is stored as its UTC moment (SQLite would otherwise keep another zone's
    wall-clock digits); a naive one is taken to be UTC already. A value read back naive
    (SQLite) is marked UTC; an aware one (PostgreSQL) is left as the driver made it.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)
