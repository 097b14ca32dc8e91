"""How one request to the provider runs, as a value handed to Authlib's callbacks.

A token request runs one of three ways, and whoever runs it says which, explicitly
(``AuthorizationServer.running``):

- :class:`NoDatabase`: on the event loop, with no database at all (a client credentials
  grant from a cached client);
- :class:`Planned`: on the event loop, with the rows it reads fetched beforehand and its
  one write deferred until Authlib has answered (identity.oidc.token_fast_path);
- :class:`InTransaction`: in a worker thread, in one database transaction.

Anything a way cannot do (the first two have no transaction) raises
:class:`NoTransactionError`: the request then runs again from the start, in a
transaction. Nothing was written by then.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Connection, Dialect
from sqlalchemy.orm import Session

from carebridge.db import DirectStatement
from identity.oidc import tokens

Redeemed = Literal["authorization_code", "refresh_token"]


class NoTransactionError(RuntimeError):
    """The work needs the database in a way this request's execution cannot give it (the
    token endpoint then runs it again, in a worker thread, in a transaction)."""


class Execution:
    """How a request runs: what its callbacks may ask of the database. This base has no
    database at all."""

    def session(self) -> Session:
        """The ORM Session of the request's transaction."""
        raise NoTransactionError("no transaction is open here")

    def connection(self) -> Connection:
        """The transaction's connection: for the hot statements, no Session made."""
        raise NoTransactionError("no transaction is open here")

    def read(self, statement: DirectStatement, params: dict[str, Any]) -> Any:
        """The first row of a hot statement."""
        raise NoTransactionError("no transaction is open here")

    def redeem(self, kind: Redeemed, token_hash: str, successor: dict[str, Any] | None) -> bool:
        """Use a code or refresh token, storing its successor (tokens.redeem)."""
        raise NoTransactionError("no transaction is open here")


class NoDatabase(Execution):
    """On the event loop, no database: every question raises NoTransactionError."""


class Planned(Execution):
    """On the event loop, without a transaction: the rows it reads, fetched before
    Authlib runs, and the one statement it writes, deferred until Authlib has answered and
    then run, atomic on its own (identity.oidc.token_fast_path). Anything else (the
    Session, another row, a second write) raises :class:`NoTransactionError`."""

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

    def redeem(self, kind: Redeemed, token_hash: str, successor: dict[str, Any] | None) -> bool:
        """Deferred, to run once Authlib has answered: True here, for the claim is checked
        when it runs, and an answer whose claim fails is never sent."""
        self.defer(*tokens.redemption(self.dialect, kind, token_hash, successor))
        return True


class InTransaction(Execution):
    """One request's transaction: a connection in a transaction, and an ORM Session on it,
    made only when something asks for one. A token grant's hot path runs its few
    statements on the connection and never pays for a Session (about a quarter of a
    refresh's CPU); anything else (a revocation, an audit record, a client lookup) gets
    the Session, which joins the same transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._session: Session | None = None

    def connection(self) -> Connection:
        return self._connection

    def session(self) -> Session:
        if self._session is None:
            # Joins the connection's transaction. Its commit flushes and runs the commit
            # hooks (carebridge.audit's staged records) but leaves the transaction to this
            # object; a rollback, or a flush failing outside a savepoint, rolls back the
            # whole request (it then raises rather than commit part of it).
            self._session = Session(
                bind=self._connection,
                expire_on_commit=False,
                join_transaction_mode="rollback_only",
            )
        return self._session

    def read(self, statement: DirectStatement, params: dict[str, Any]) -> Any:
        return statement.first(self._connection, params)

    def redeem(self, kind: Redeemed, token_hash: str, successor: dict[str, Any] | None) -> bool:
        return tokens.redeem(self._connection, kind, token_hash, successor)

    def finish(self) -> None:
        """Flush the Session's work into the transaction, before the transaction commits.
        (Its ``after_commit`` hooks run then, before the real commit: none is used.)"""
        if self._session is not None:
            self._session.commit()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
