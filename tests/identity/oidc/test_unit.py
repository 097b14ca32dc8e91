"""The provider's request transaction (identity.oidc.execution.InTransaction): statements
on its connection and work through its ORM Session commit together, or not at all."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import Table, insert, select

from carebridge import audit
from carebridge.audit import AuditRecord, Outcome
from carebridge.runtime import Runtime
from identity.oidc.execution import NoDatabase, NoTransactionError
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
    with server.in_transaction() as execution:
        execution.connection().execute(
            insert(_WITHDRAWN), {"kind": "jti", "value": "by-connection", "expires_at": _later()}
        )
        db = execution.session()
        db.add(OidcWithdrawal(kind="jti", value="by-session", expires_at=_later()))
        audit.stage(db, actor="test", action="test.unit", outcome=Outcome.ALLOWED)
    assert _kept(runtime) == {"by-connection", "by-session"}
    with runtime.sessions() as session:
        actions = session.scalars(select(AuditRecord.action)).all()
    assert actions == ["test.unit"]


def test_a_failure_rolls_back_both(runtime: Runtime) -> None:
    server = AuthorizationServer(runtime)

    def failing_grant() -> None:
        with server.in_transaction() as execution:
            values = {"kind": "jti", "value": "by-connection", "expires_at": _later()}
            execution.connection().execute(insert(_WITHDRAWN), values)
            db = execution.session()
            db.add(OidcWithdrawal(kind="jti", value="flushed", expires_at=_later()))
            db.flush()
            db.add(OidcWithdrawal(kind="jti", value="pending", expires_at=_later()))
            raise RuntimeError("the grant failed")

    with pytest.raises(RuntimeError):
        failing_grant()
    assert _kept(runtime) == set()


def test_a_session_is_made_only_when_asked_for(runtime: Runtime) -> None:
    server = AuthorizationServer(runtime)
    with helpers.provider_sessions() as begun, server.in_transaction() as execution:
        execution.connection().execute(select(1))
        assert begun == []
        execution.session().execute(select(1))
        assert begun == [execution.session()]
    # On the event loop, with no database, neither is there to ask for.
    with pytest.raises(NoTransactionError):
        NoDatabase().session()
    with pytest.raises(NoTransactionError):
        NoDatabase().connection()


def test_the_server_changes_no_process_environment(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loopback http issuer (development, tests) is secure transport to Authlib as it is:
    # nothing process-wide is switched off for it.
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    before = dict(os.environ)
    AuthorizationServer(runtime)
    assert runtime.settings.issuer.startswith("http://127.0.0.1")
    assert dict(os.environ) == before
