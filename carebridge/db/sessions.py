"""Sessions and transactions: one unit of work each, its budget widened where a job needs it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from carebridge.db import deadlines
from carebridge.db.budget import Budget


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session], budget: Budget | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    With ``budget``, this one transaction has that budget instead of its process's role
    (:func:`widen`): for the rare long job a web request starts (a roster import).
    """
    with sessions.begin() as session:
        if budget is not None:
            widen(session, budget)
        yield session


def widen(session: Session, budget: Budget) -> None:
    """Give the rest of the session's transaction ``budget``: its statements' and lock
    waits' bounds on PostgreSQL (``SET LOCAL``: until the transaction ends) and the
    client's deadline on its waits, its COMMIT included (until the connection returns to
    the pool, which restores its role's). One round trip. On SQLite there is nothing to
    widen: the transaction already holds the write lock (``BEGIN IMMEDIATE``), and a
    statement has no time limit there.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    milliseconds = str(round(budget.seconds * 1000))
    connection.execute(
        text(
            "SELECT set_config('statement_timeout', :ms, true),"
            " set_config('lock_timeout', :ms, true)"
        ),
        {"ms": milliseconds},
    )
    driver = connection.connection.driver_connection
    if isinstance(driver, deadlines.WatchedConnection):
        driver.limit = budget.client_seconds
