"""What Authlib's callbacks reach without being passed it: the request's transaction, or
the plan of a token request answered on the event loop; and the provider's paths and
request limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.orm import Session

from carebridge.db import DirectStatement

AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/oauth2/token"  # noqa: S105  (a path)
USERINFO_PATH = "/oauth2/userinfo"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
END_SESSION_PATH = "/end-session"

# Longest parameter accepted anywhere (a client assertion is the longest legitimate one).
MAX_PARAMETER = 4096
MAX_NONCE = 255
MAX_STATE = 1024


class Unit:
    """One request's transaction: a connection in a transaction, and an ORM Session on it,
    made only when something asks for one. A token grant's hot path runs its few
    statements on the connection and never pays for a Session (about a quarter of a
    refresh's CPU); anything else (a revocation, an audit record, a client lookup) gets
    the Session, which joins the same transaction."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            # Joins the connection's transaction. Its commit flushes and runs the commit
            # hooks (carebridge.audit's staged records) but leaves the transaction to the
            # unit; a rollback, or a flush failing outside a savepoint, rolls back the
            # whole request (the unit then raises rather than commit part of it).
            self._session = Session(
                bind=self.connection,
                expire_on_commit=False,
                join_transaction_mode="rollback_only",
            )
        return self._session

    def finish(self) -> None:
        """Flush the Session's work into the transaction, before the transaction commits.
        (Its ``after_commit`` hooks run then, before the real commit: none is used.)"""
        if self._session is not None:
            self._session.commit()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


_UNIT: ContextVar[Unit | None] = ContextVar("oidc_unit", default=None)


class NoTransactionError(RuntimeError):
    """:func:`db` was called where no transaction is open, or :func:`read` asked for a row
    the plan did not fetch: the work needs the database (the token endpoint then runs it
    again, in a worker thread, in a transaction)."""


class Plan:
    """A token request answered on the event loop, without a transaction
    (``AuthorizationServer.answer_on_loop``): the rows it reads, fetched before Authlib
    runs, and the one statement it writes, deferred until Authlib has answered and then
    run, atomic on its own. Anything else it asks of the database (the Session, another
    row, a second write) raises :class:`NoTransactionError`, and the request runs again
    in a worker thread; nothing was written by then."""

    def __init__(self, dialect: Dialect, reads: dict[tuple[Any, ...], Any]) -> None:
        self.dialect = dialect
        self._reads = reads
        self.write: tuple[DirectStatement, dict[str, Any]] | None = None

    @staticmethod
    def key(statement: DirectStatement, params: dict[str, Any]) -> tuple[Any, ...]:
        return (statement, *sorted(params.items()))

    def read(self, statement: DirectStatement, params: dict[str, Any]) -> Any:
        try:
            return self._reads[self.key(statement, params)]
        except KeyError:
            raise NoTransactionError("a row the plan did not fetch") from None

    def defer(self, statement: DirectStatement, params: dict[str, Any]) -> None:
        if self.write is not None:
            raise NoTransactionError("a second write needs a transaction")
        self.write = (statement, params)


_PLAN: ContextVar[Plan | None] = ContextVar("oidc_plan", default=None)


def plan() -> Plan | None:
    """The plan of the request answered on the event loop, if this is one."""
    return _PLAN.get()


@contextmanager
def planned(request_plan: Plan) -> Iterator[Plan]:
    """Make ``request_plan`` the one :func:`read` and :func:`plan` answer, for the block
    (no transaction is bound in it)."""
    with _binding(None, request_plan):
        yield request_plan


def read(statement: DirectStatement, params: dict[str, Any]) -> Any:
    """The first row of a hot statement: run on the request transaction's connection, or,
    for a request answered on the event loop, as its plan fetched it."""
    request_plan = _PLAN.get()
    if request_plan is not None:
        return request_plan.read(statement, params)
    return statement.first(_unit().connection, params)


def _unit() -> Unit:
    unit = _UNIT.get()
    if unit is None:
        raise NoTransactionError("no transaction is open here")
    return unit


def db() -> Session:
    """The ORM Session of the request's transaction (Authlib's callbacks take none)."""
    return _unit().session


def connection() -> Connection:
    """The request transaction's connection: for the hot statements, no Session made."""
    return _unit().connection


@contextmanager
def unbound() -> Iterator[None]:
    """No transaction (nor plan) for the duration of the block: :func:`db` raises
    NoTransactionError."""
    with _binding(None, None):
        yield


@contextmanager
def bound(unit: Unit) -> Iterator[Unit]:
    """Make ``unit`` the one :func:`db` and :func:`connection` answer, for the block."""
    with _binding(unit, None):
        yield unit


@contextmanager
def _binding(unit: Unit | None, request_plan: Plan | None) -> Iterator[None]:
    reset_unit = _UNIT.set(unit)
    reset_plan = _PLAN.set(request_plan)
    try:
        yield
    finally:
        _PLAN.reset(reset_plan)
        _UNIT.reset(reset_unit)
