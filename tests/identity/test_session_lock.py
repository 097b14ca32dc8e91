"""The account's session lock: a session raised while every session is being ended does
not survive the ending (identity/sessions.py, ``lock_account_sessions``).

Each test raises a level-1 session to level 2 and, from inside that transaction, just
before the new session is written, starts an "end every session" in another thread (its
own connection) and lets it go as far as the locks allow. Without the lock, on
PostgreSQL the ender's DELETE commits first (or looks before the INSERT commits) and the
raised session survives it; with it, the ender waits and then ends the raised one too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge import mail
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamFollowers
from identity import sessions
from identity.flows import account, mfa, reset, status
from identity.models import AuthSession, RecoveryCode, TotpCredential
from tests.identity import account_changes, factories
from tests.identity.reset_mail import Mailbox, reset_token

NEW_PASSWORD = "new staple orbit lantern"


def _raise_while(
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    patient: account_changes.Patient,
    ender: Callable[[], Any],
) -> mfa.Result:
    """Pass the second factor of a fresh level-1 session, running ``ender`` in another
    thread from inside that transaction, just before the raised session is written."""
    token = factories.session(runtime, patient.account_id, level=sessions.FIRST_FACTOR)
    with runtime.sessions() as db:
        session = sessions.load(db, runtime, token)
    assert session is not None
    real_start = sessions.start
    racing: list[threading.Thread] = []

    def end_then_start(*args: Any, **kwargs: Any) -> sessions.Started:
        thread = threading.Thread(target=ender)
        thread.start()
        thread.join(timeout=1.5)  # as far as the raising transaction's locks let it go
        racing.append(thread)
        return real_start(*args, **kwargs)

    monkeypatch.setattr(sessions, "start", end_then_start)
    result = mfa.pass_second_factor(
        runtime,
        session,
        account_changes.next_code(patient.app),
        method="totp",
        user_agent="",
        request_id=None,
    )
    monkeypatch.undo()
    for thread in racing:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert racing, "the race never ran"
    return result


def _surviving(runtime: Runtime, account_id: str) -> list[AuthSession]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuthSession).where(AuthSession.account_id == account_id)))


def test_mfa_step_racing_a_reset_does_not_survive(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = account_changes.patient(runtime)
    assert client.post("/api/v1/password/forgot", json={"login": patient.login}).status_code == 202
    link = reset_token(Mailbox().last_to(runtime, patient.login))
    sender = client.app.state.outward.email  # type: ignore[attr-defined]

    def reset_password() -> None:
        reset.reset_password(runtime, sender, link, NEW_PASSWORD, client_host=None)

    result = _raise_while(runtime, monkeypatch, patient, reset_password)

    assert result.status is mfa.Status.OK  # raised, and then ended by the reset
    assert _surviving(runtime, patient.account_id) == []


def test_mfa_step_racing_sign_out_everywhere_does_not_survive(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = account_changes.patient(runtime)

    def sign_out_everywhere() -> None:
        account.sign_out_everywhere(runtime, patient.account_id, request_id=None)

    _raise_while(runtime, monkeypatch, patient, sign_out_everywhere)

    assert _surviving(runtime, patient.account_id) == []


def test_mfa_step_racing_an_operators_disabling_does_not_survive(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = account_changes.patient(runtime)

    def disable() -> None:
        status.set_active_by_id(
            runtime, patient.account_id, active=False, followers=CareTeamFollowers()
        )

    _raise_while(runtime, monkeypatch, patient, disable)

    assert _surviving(runtime, patient.account_id) == []


def test_new_recovery_codes_for_a_session_signed_out_meanwhile_are_refused(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request read its (stolen, stepped-up) session; the owner then signs out
    # everywhere. The codes' transaction reads the session again under the lock; so does
    # turning two-step verification off (where it is optional).
    optional = runtime.settings.model_copy(update={"mfa_required": False})
    monkeypatch.setattr(runtime, "settings", optional)
    email = mail.OutboxEmailSender(runtime)
    patient = account_changes.patient(runtime)
    token = factories.session(runtime, patient.account_id, level=2, stepped_up=True)
    with runtime.sessions() as db:
        session = sessions.load(db, runtime, token)
    assert session is not None
    with runtime.sessions() as db:
        before = [row.code_hash for row in db.scalars(select(RecoveryCode))]
    account.sign_out_everywhere(runtime, patient.account_id, request_id=None)

    state, codes = account.regenerate_recovery_codes(
        runtime, session, request_id=None, email=email, reveal=False
    )
    removed = account.remove_totp(runtime, session, request_id=None, email=email)

    assert (state, codes, removed) == (mfa.Status.GONE, [], mfa.Status.GONE)
    with runtime.sessions() as db:
        assert [row.code_hash for row in db.scalars(select(RecoveryCode))] == before
        assert db.get(TotpCredential, patient.account_id) is not None
