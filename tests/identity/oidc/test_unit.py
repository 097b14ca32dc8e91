"""The provider's request transaction (identity.oidc.context.Unit): statements on its
connection and work through its ORM Session commit together, or not at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import Table, insert, select

from carebridge import audit
from carebridge.audit import AuditRecord, Outcome
from carebridge.runtime import Runtime
from identity.oidc.context import NoTransactionError, connection, db
from identity.oidc.models import OidcWithdrawal
from identity.oidc.server import AuthorizationServer
from tests.identity.oidc import helpers

_WITHDRAWN = cast(Table, OidcWithdrawal.__table__)


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=10)


def _kept(runtime: Runtime) -> set[str]:
    with runtime.sessions() as session:
        return set(session.scalars(select(OidcWithdrawal.value)))


def test_connection_and_session_work_commit_together(runtime: Runtime) -> None:
    server = AuthorizationServer(runtime)
    with server.unit():
        connection().execute(
            insert(_WITHDRAWN), {"kind": "jti", "value": "by-connection", "expires_at": _later()}
        )
        db().add(OidcWithdrawal(kind="jti", value="by-session", expires_at=_later()))
        audit.stage(db(), actor="test", action="test.unit", outcome=Outcome.ALLOWED)
    assert _kept(runtime) == {"by-connection", "by-session"}
    with runtime.sessions() as session:
        actions = session.scalars(select(AuditRecord.action)).all()
    assert actions == ["test.unit"]


def test_a_failure_rolls_back_both(runtime: Runtime) -> None:
    server = AuthorizationServer(runtime)

    def failing_grant() -> None:
        with server.unit():
            values = {"kind": "jti", "value": "by-connection", "expires_at": _later()}
            connection().execute(insert(_WITHDRAWN), values)
            db().add(OidcWithdrawal(kind="jti", value="flushed", expires_at=_later()))
            db().flush()
            db().add(OidcWithdrawal(kind="jti", value="pending", expires_at=_later()))
            raise RuntimeError("the grant failed")

    with pytest.raises(RuntimeError):
        failing_grant()
    assert _kept(runtime) == set()


def test_a_session_is_made_only_when_asked_for(runtime: Runtime) -> None:
    server = AuthorizationServer(runtime)
    with helpers.provider_sessions() as begun, server.unit():
        connection().execute(select(1))
        assert begun == []
        db().execute(select(1))
        assert begun == [db()]
    with pytest.raises(NoTransactionError):
        db()
    with pytest.raises(NoTransactionError):
        connection()
