"""Staff-assisted recovery of a lost second factor: started by an operator (CLI, admin API
with its own scope), the one-time code only in the e-mail to the verified address (never
in the CLI's output, the API's answer or the logs), then the same wait and notices."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import accounts
from identity.credentials import password
from identity.models import RecoveryRequest, StaffAction
from tests.identity import factories
from tests.identity.reset_mail import Mailbox, Sent
from tests.identity.test_recovery import (
    _CANCEL,
    LOGIN,
    Clock,
    _account,
    _bearer,
    _factors,
    _sign_in,
    _state,
    _token,
    clock,
    mailbox,
    settings,
)
from tests.tokens import mint

__all__ = ["clock", "mailbox", "settings"]  # fixtures, shared with test_recovery

_CODE = re.compile(r"\b((?:[A-Z2-7]{4}-){6}[A-Z2-7]{2})\b")
EVIDENCE = "photo ID checked at the front desk"
REASON = "lost phone and recovery codes, ticket 4711"


def _operator(runtime: Runtime, scope: str, **overrides: str) -> dict[str, str]:
    claims = {"sub": "ops", "client_id": "ops", "scope": scope} | overrides
    return _bearer(mint(runtime, **claims))


def _code(sent: Sent) -> str:
    assert sent.subject == "Your account recovery code"
    match = _CODE.search(sent.text)
    assert match, sent.text
    assert match.group(1) in sent.html
    return match.group(1)


def _enter(client: TestClient, session_token: str, code: str) -> int:
    response = client.post(
        "/api/v1/recovery/code", json={"code": code}, headers=_bearer(session_token)
    )
    return response.status_code


def test_staff_recovery_by_admin_api_sends_the_code_only_by_email(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    mailbox: Mailbox,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account_id, _ = _account(runtime, tmp_path, roster=False)  # staff need no roster link
    path = f"/api/v1/admin/accounts/{account_id}/recovery"
    started = client.post(
        path,
        json={"evidence": EVIDENCE, "reason": REASON},
        headers=_operator(runtime, "admin.recovery"),
    )
    assert started.status_code == 202, started.text
    code = _code(mailbox.last_to(runtime, LOGIN))
    assert code not in started.text and code.replace("-", "") not in started.text
    assert code not in caplog.text and code.replace("-", "") not in caplog.text
    with runtime.sessions() as db:
        row = db.scalars(select(RecoveryRequest)).one()
        kept = db.scalars(select(StaffAction)).one()
    assert (row.kind, row.operator, row.evidence, row.reason) == (
        "staff",
        "client:ops",
        EVIDENCE,
        REASON,
    )
    assert kept.account_id == account_id and kept.reason == REASON

    session_token = _sign_in(client, runtime)
    assert "I have a code from support" in client.get("/mfa/challenge").text
    assert _enter(client, session_token, "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AA") == 400
    assert _enter(client, session_token, code.lower()) == 200
    notice = mailbox.last_to(runtime, LOGIN)
    assert notice.subject == "Your second factor will be replaced"
    assert _token(notice, _CANCEL)
    assert _enter(client, session_token, code) == 400  # single use
    assert client.post("/api/v1/recovery/complete", headers=_bearer(session_token)).status_code == (
        409
    )
    clock.advance(timedelta(hours=1, seconds=1))
    done = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert done.status_code == 204
    assert _factors(runtime, account_id) == (False, 0)
    assert _state(runtime, account_id) == ["completed"]
    assert client.post("/api/v1/mfa/totp/enroll", headers=_bearer(session_token)).status_code == (
        200
    )


def test_wrong_scope_or_a_person_cannot_start_staff_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    path = f"/api/v1/admin/accounts/{account_id}/recovery"
    body = {"evidence": EVIDENCE, "reason": REASON}
    for scope in ("admin.roster", "admin.accounts"):
        refused = client.post(path, json=body, headers=_operator(runtime, scope))
        assert refused.status_code == 403, scope
    as_a_person = client.post(
        path, json=body, headers=_operator(runtime, "admin.recovery", sub="someone")
    )
    assert as_a_person.status_code == 403
    no_evidence = client.post(
        path, json={"evidence": " ", "reason": REASON}, headers=_operator(runtime, "admin.recovery")
    )
    assert no_evidence.status_code == 400
    unknown = client.post(
        "/api/v1/admin/accounts/acc_nobody/recovery",
        json=body,
        headers=_operator(runtime, "admin.recovery"),
    )
    assert unknown.status_code == 404
    assert mailbox.collect(runtime) == []
    assert _state(runtime, account_id) == []


def test_staff_recovery_by_cli_never_prints_the_code(  # noqa: PLR0917
    cli_env: Path,
    runtime: Runtime,
    client: TestClient,
    mailbox: Mailbox,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_RECOVERY_WAIT_HOURS", "1")
    account_id, _ = _account(runtime, tmp_path)
    argv = ["accounts", "recover", "--account-id", account_id]
    assert main([*argv, "--evidence", EVIDENCE, "--reason", REASON]) == 0
    out = capsys.readouterr()
    code = _code(mailbox.last_to(runtime, LOGIN))
    assert code not in out.out + out.err and code.replace("-", "") not in out.out + out.err
    assert "not shown here" in out.out
    session_token = _sign_in(client, runtime)
    assert _enter(client, session_token, code) == 200
    # Without evidence: refused, nothing sent.
    sent = len(mailbox.collect(runtime))
    assert main([*argv, "--evidence", " ", "--reason", REASON]) == 1
    assert len(mailbox.collect(runtime)) == sent


def test_staff_code_cancelled_by_this_wasnt_me(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    path = f"/api/v1/admin/accounts/{account_id}/recovery"
    client.post(
        path,
        json={"evidence": EVIDENCE, "reason": REASON},
        headers=_operator(runtime, "admin.recovery"),
    )
    code = _code(mailbox.last_to(runtime, LOGIN))
    session_token = _sign_in(client, runtime)
    assert _enter(client, session_token, code) == 200
    cancel = _token(mailbox.last_to(runtime, LOGIN), _CANCEL)
    assert client.post("/api/v1/recovery/cancel", json={"token": cancel}).status_code == 204
    clock.advance(timedelta(hours=2))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert response.status_code == 401  # and the session that asked is gone
    assert _factors(runtime, account_id)[0]


def test_staff_code_of_one_account_does_nothing_for_another(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    client.post(
        f"/api/v1/admin/accounts/{account_id}/recovery",
        json={"evidence": EVIDENCE, "reason": REASON},
        headers=_operator(runtime, "admin.recovery"),
    )
    code = _code(mailbox.last_to(runtime, LOGIN))
    other = "other@example.org"
    hashed = password.hash_password(runtime.settings, "another long passphrase")
    with transaction(runtime.sessions) as db:
        other_id = accounts.create(db, runtime.keyring, login=other, password_hash=hashed)
    intruder = factories.session(runtime, other_id)
    assert _enter(client, intruder, code) == 400
    assert _state(runtime, account_id) == ["started"]
    assert _state(runtime, other_id) == []


def test_password_holder_cannot_void_the_staff_code_by_starting_self_service(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    client.post(
        f"/api/v1/admin/accounts/{account_id}/recovery",
        json={"evidence": EVIDENCE, "reason": REASON},
        headers=_operator(runtime, "admin.recovery"),
    )
    code = _code(mailbox.last_to(runtime, LOGIN))
    # Someone with only the password starts self-service, again and again.
    intruder = _sign_in(client, runtime)
    for _ in range(2):
        client.post("/api/v1/recovery/start", headers=_bearer(intruder))
    assert _state(runtime, account_id) == ["started"]
    # The owner's code from support still works.
    owner = _sign_in(client, runtime)
    assert _enter(client, owner, code) == 200
    assert _state(runtime, account_id) == ["waiting"]
