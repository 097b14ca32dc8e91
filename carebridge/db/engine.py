"""The engine: SQLite (the embedded default) or PostgreSQL (production), every wait bounded.

On SQLite every transaction starts with ``BEGIN IMMEDIATE``: writers queue on the
database lock (for ``busy_timeout``) instead of failing with ``SQLITE_BUSY`` when a read
transaction later tries to write, which is what a web process with several threads does
all day.

Every wait on the database is bounded by the process's :class:`Budget` (its role's: web
requests, the worker, the CLI): see :func:`make_engine`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InvalidatePoolError

from carebridge.db import deadlines
from carebridge.db.budget import Budget
from carebridge.db.errors import DatabaseUnavailableError


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(budget: Budget) -> Any:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not pysqlite, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A lock held by another (a long CLI import) is waited for this long, then
        # "database is locked": a 503 for a web request. (A PRAGMA takes no bound
        # parameter: its value, a whole number computed here, is written in.)
        cursor.execute(f"PRAGMA busy_timeout={round(budget.seconds * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return pragmas


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# TCP keepalives on every PostgreSQL connection: a peer gone without a word (a host
# lost, a failover behind a firewall that drops instead of resetting) is noticed on an
# idle pooled connection within about 25 s, and firewalls keep idle connections open.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def make_engine(url: str, budget: Budget | None = None) -> Engine:
    """The engine of a process whose role has ``budget`` (default: a web process's).

    On PostgreSQL every wait is bounded: connecting (libpq ``connect_timeout``), a
    pooled connection (``pool_timeout``), each statement and lock wait (the server's
    ``statement_timeout``, ``lock_timeout``; a transaction left idle,
    ``idle_in_transaction_session_timeout``), and on the client a wait the server never
    answers (:mod:`carebridge.db.deadlines`; bytes left unacknowledged,
    ``tcp_user_timeout``). Options the URL sets itself win, save the server settings,
    which are added to its own ``options``.
    """
    budget = budget or Budget()
    if url.startswith("sqlite"):
        # A file's pool of connections is waited for within the budget too (an in-memory
        # database has one connection per thread, nothing to wait for).
        memory = make_url(url).database in (None, "", ":memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": budget.seconds},
            # A failed statement's error would carry its bound values into the log.
            hide_parameters=True,
            **({} if memory else {"pool_timeout": budget.pool_seconds}),
        )
        event.listen(engine, "connect", _sqlite_pragmas(budget))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    query = make_url(url).query
    settings = " ".join(f"-c {name}={value}" for name, value in budget.server_settings().items())
    given = query.get("options")
    defaults: dict[str, Any] = {
        "connect_timeout": budget.connect_seconds,
        "application_name": f"carebridge-{budget.role}",
        **KEEPALIVES,
        "tcp_user_timeout": round(budget.client_seconds * 1000),
    }
    connect_args = {name: value for name, value in defaults.items() if name not in query}
    connect_args["options"] = f"{given} {settings}" if isinstance(given, str) else settings
    engine = create_engine(
        url,
        # A failed statement's error would carry its bound values into the log.
        hide_parameters=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=budget.pool_seconds,
        connect_args=connect_args,
    )

    @event.listens_for(engine, "do_connect")
    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return deadlines.connect(budget.client_seconds, *cargs, **cparams)

    @event.listens_for(engine, "checkin")
    def role_limit(dbapi_connection: Any, _record: Any) -> None:
        # Back to the role's deadline, whatever one transaction widened it to (widen()).
        if dbapi_connection is not None:
            dbapi_connection.limit = budget.client_seconds

    _ping_when_idle(engine)
    return engine


# A pooled connection is checked with a round trip before use only if it sat idle longer
# than this (as HikariCP does): one used a moment ago is alive, and pinging it cost ~60 µs
# of every request. One found dead is replaced, and the pool's other connections as old
# are discarded too (a database restart killed them all). One that died within that
# moment fails its request; SQLAlchemy then does the same, and the next requests connect
# afresh.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    def fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if getattr(dbapi_connection, "ended_by_deadline", False):
            # Shut down by its deadline as its statement finished (answered normally, so
            # never invalidated): never handed out again. The pool connects afresh.
            raise DisconnectionError("shut down by its deadline")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if getattr(dbapi_connection, "ended_by_deadline", False):
                # The database did not answer in the budget: the request fails now (the
                # pool drops this connection) instead of also waiting to reconnect.
                raise DatabaseUnavailableError("the database did not answer in time") from exc
            # The pool reconnects this slot; on a disconnect it also drops the connections
            # older than this one (SQLAlchemy's own pre-ping does the same).
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(type(exc).__name__) from exc
            raise DisconnectionError(type(exc).__name__) from exc

    event.listen(engine, "connect", fresh)
    event.listen(engine, "checkout", ping)
    event.listen(engine, "checkin", fresh)
