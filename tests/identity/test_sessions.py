"""Server-side sessions: hashed tokens, rotation, idle and absolute expiry, revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import sessions
from identity.models import Account, AuthSession, new_id
from tests.identity import factories


def _account(runtime: Runtime) -> str:
    account_id = new_id("acc")
    with transaction(runtime.sessions) as db:
        db.add(Account(id=account_id, created_at=datetime.now(UTC), status="active"))
    return account_id


def _start(runtime: Runtime, account_id: str, level: int = 1) -> sessions.Started:
    with transaction(runtime.sessions) as db:
        return sessions.start(
            db,
            runtime,
            factories.lock(db, account_id),
            level=level,
            first_factor=sessions.PASSWORD,
            user_agent="ua",
        )


def _load(runtime: Runtime, token: str) -> AuthSession | None:
    with transaction(runtime.sessions) as db:
        return sessions.load(db, runtime, token)


def test_only_a_keyed_hash_of_the_token_is_stored(runtime: Runtime) -> None:
    started = _start(runtime, _account(runtime))
    with runtime.sessions() as db:
        stored = db.scalars(select(AuthSession)).one()
    assert started.token not in (stored.token_hash, stored.handle)
    assert stored.token_hash == runtime.keyring.lookup_hash("session", started.token)
    assert _load(runtime, started.token) is not None
    assert _load(runtime, started.token + "x") is None


def test_stepping_up_issues_a_new_token_and_keeps_the_absolute_expiry(runtime: Runtime) -> None:
    account_id = _account(runtime)
    first = _start(runtime, account_id)
    with transaction(runtime.sessions) as db:
        old = sessions.load(db, runtime, first.token)
        assert old is not None
        second = sessions.start(
            db, runtime, factories.lock(db, account_id), level=sessions.SECOND_FACTOR, replacing=old
        )
    assert second.token != first.token
    assert _load(runtime, first.token) is None  # the pre-MFA token is worthless now
    again = _load(runtime, second.token)
    assert again is not None
    assert again.level == sessions.SECOND_FACTOR
    assert again.expires_at == first.session.expires_at


@pytest.mark.parametrize(
    ("field", "age"),
    [("last_seen_at", timedelta(minutes=15)), ("expires_at", timedelta(seconds=0))],
)
def test_idle_and_absolute_expiry_end_the_session(
    runtime: Runtime, field: str, age: timedelta
) -> None:
    started = _start(runtime, _account(runtime))
    with transaction(runtime.sessions) as db:
        session = db.get(AuthSession, started.session.token_hash)
        assert session is not None
        setattr(session, field, datetime.now(UTC) - age)
    assert _load(runtime, started.token) is None
    with runtime.sessions() as db:
        assert db.get(AuthSession, started.session.token_hash) is None  # deleted, not kept


def test_use_within_the_idle_window_keeps_the_session(runtime: Runtime) -> None:
    started = _start(runtime, _account(runtime))
    with transaction(runtime.sessions) as db:
        session = db.get(AuthSession, started.session.token_hash)
        assert session is not None
        session.last_seen_at = datetime.now(UTC) - timedelta(minutes=14)
    assert _load(runtime, started.token) is not None
    with runtime.sessions() as db:
        session = db.get(AuthSession, started.session.token_hash)
        assert session is not None
        assert datetime.now(UTC) - session.last_seen_at < timedelta(minutes=1)


def test_revoking_another_accounts_session_by_handle_does_nothing(runtime: Runtime) -> None:
    mine, theirs = _account(runtime), _account(runtime)
    their_session = _start(runtime, theirs)
    with transaction(runtime.sessions) as db:
        assert not sessions.revoke(db, mine, their_session.session.handle)
    assert _load(runtime, their_session.token) is not None
    with transaction(runtime.sessions) as db:
        assert sessions.revoke(db, theirs, their_session.session.handle)
    assert _load(runtime, their_session.token) is None


def test_revoke_all_can_keep_the_current_session(runtime: Runtime) -> None:
    account_id = _account(runtime)
    current, other = _start(runtime, account_id), _start(runtime, account_id)
    with transaction(runtime.sessions) as db:
        keep = db.get(AuthSession, current.session.token_hash)
        sessions.revoke_all(db, factories.lock(db, account_id), keep=keep)
    assert _load(runtime, current.token) is not None
    assert _load(runtime, other.token) is None


def test_replacing_a_session_another_request_replaced_first_is_no_error(
    runtime: Runtime,
) -> None:
    # Two step-ups racing in one browser: both hold the same old session; the second to
    # commit finds it gone already and must still succeed instead of answering 500.
    account_id = _account(runtime)
    first = _start(runtime, account_id)
    with transaction(runtime.sessions) as db:
        held_by_second = sessions.load(db, runtime, first.token)
    with transaction(runtime.sessions) as db:
        held_by_first = sessions.load(db, runtime, first.token)
        assert held_by_first is not None
        sessions.start(
            db, runtime, factories.lock(db, account_id), level=2, replacing=held_by_first
        )
    assert held_by_second is not None
    with transaction(runtime.sessions) as db:
        late = sessions.start(
            db, runtime, factories.lock(db, account_id), level=2, replacing=held_by_second
        )
        sessions.end(db, held_by_second)  # and a sign-out of the same, already gone
    assert _load(runtime, late.token) is not None
    assert _load(runtime, first.token) is None
