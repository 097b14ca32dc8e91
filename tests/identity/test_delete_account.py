"""Deleting an account, by its owner (after a step-up) or for an erasure request (the
admin API with scope admin.accounts, and the CLI): the sign-in methods, sessions, grants,
consents, contact points and the patient link go; the patient's messages and the audit
log stay; a last notice goes to a verified address; the login can sign up afresh.
Through HTTP, both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.models import (
    Account,
    AuthSession,
    LoginIdentifier,
    PasswordCredential,
    PatientLink,
    RecoveryCode,
    RosterMember,
    StaffAction,
    TotpCredential,
)
from identity.oidc.models import OidcConsent, OidcRefreshToken
from messaging.models import Message, Thread
from sms.models import ContactPoint, Preferences
from tests.identity import factories
from tests.identity.account_changes import (
    PASSWORD,
    bearer,
    emails_to,
    grant,
    patient,
    post_form,
    refreshes,
    step_up,
)
from tests.identity.account_changes import Patient as PatientAccount
from tests.identity.roster_helpers import link
from tests.messaging.conftest import World, build_world, start_thread
from tests.tokens import mint

REASON = {"reason": "erasure request 2026-114, identity checked by phone"}


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


def _patient_with_a_record(
    client: TestClient, runtime: Runtime, world: World
) -> tuple[PatientAccount, str]:
    """pip (on the roster, no account yet) signs up: an account linked to pip's patient
    ID, a thread from the care team, a phone number and notification preferences."""
    pat = patient(runtime)
    patient_id = world.patients["pip"]
    link(runtime, pat.account_id, patient_id)
    start_thread(client, world, "pip", body="Your results are in.")
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.add(
            ContactPoint(
                id="cp_pip",
                patient_id=patient_id,
                number_encrypted=b"sealed",
                number_hash="hash-of-the-number",
                last_digits="0123",
                verified_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        db.add(
            Preferences(
                patient_id=patient_id,
                sms_enabled=True,
                time_zone="UTC",
                quiet_start="21:00",
                quiet_end="08:00",
                daily_cap=3,
                weekly_cap=10,
                updated_at=now,
            )
        )
    return pat, patient_id


def _left_of(runtime: Runtime, account_id: str) -> dict[str, int]:
    with runtime.sessions() as db:
        return {
            model.__tablename__: db.scalar(
                select(func.count()).select_from(model).where(model.account_id == account_id)
            )
            or 0
            for model in (
                LoginIdentifier,
                PasswordCredential,
                TotpCredential,
                RecoveryCode,
                AuthSession,
                PatientLink,
                OidcConsent,
                OidcRefreshToken,
            )
        } | {"account": int(db.get(Account, account_id) is not None)}


def _record_of(runtime: Runtime, patient_id: str) -> tuple[int, int, bool]:
    """The care record: threads and messages of the patient, and their roster entry."""
    with runtime.sessions() as db:
        threads = db.scalar(
            select(func.count()).select_from(Thread).where(Thread.patient_id == patient_id)
        )
        messages = db.scalar(
            select(func.count())
            .select_from(Message)
            .join(Thread, Thread.id == Message.thread_id)
            .where(Thread.patient_id == patient_id)
        )
        on_roster = db.scalar(select(RosterMember).where(RosterMember.patient_id == patient_id))
        return threads or 0, messages or 0, on_roster is not None


def _audit_count(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(AuditRecord)) or 0


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as db:
        return [r.action for r in db.scalars(select(AuditRecord).order_by(AuditRecord.seq))]


def _assert_gone_but_record_kept(runtime: Runtime, account_id: str, patient_id: str) -> None:
    assert set(_left_of(runtime, account_id).values()) == {0}
    assert _record_of(runtime, patient_id) == (1, 1, True)
    with runtime.sessions() as db:
        contact = db.scalar(select(ContactPoint).where(ContactPoint.patient_id == patient_id))
        assert contact is not None and contact.number_hash == "" and contact.last_digits == ""
        assert contact.number_encrypted == b""
        assert db.get(Preferences, patient_id) is None


def test_deleting_the_account_removes_what_it_says_and_keeps_the_care_record(
    client: TestClient, runtime: Runtime, world: World
) -> None:
    pat, patient_id = _patient_with_a_record(client, runtime, world)
    other_device = factories.session(runtime, pat.account_id, level=2)
    factories.sign_in(client, runtime, pat.account_id, level=2)
    registered, tokens = grant(client, runtime)
    step_up(client, pat.app.now())
    page = client.get("/account/delete")
    assert page.status_code == 200
    assert "What your care team keeps" in page.text
    audit_before = _audit_count(runtime)

    unconfirmed = post_form(client, "/account/delete", "/account/delete", {})
    assert unconfirmed.status_code == 400
    assert _left_of(runtime, pat.account_id)["account"] == 1

    deleted = post_form(client, "/account/delete", "/account/delete", {"confirm": "yes"})
    assert deleted.status_code == 200
    assert "Your account was deleted" in deleted.text
    assert 'carebridge_session=""' in deleted.headers["set-cookie"]
    _assert_gone_but_record_kept(runtime, pat.account_id, patient_id)
    assert client.get("/api/v1/sessions", headers=bearer(other_device)).status_code == 401
    assert not refreshes(client, registered, tokens["refresh_token"])
    assert client.get("/oauth2/userinfo", headers=bearer(tokens["access_token"])).status_code == 401
    # The audit log keeps everything it had, and says what happened.
    assert _audit_count(runtime) > audit_before
    assert "identity.account.delete" in _actions(runtime)
    (notice,) = emails_to(runtime, pat.login)
    assert notice["subject"] == "Your account was deleted"
    assert "care team" in notice["text"]
    # The others are untouched.
    assert _left_of(runtime, world.accounts["zeb"])["patient_link"] == 1


def test_the_old_login_can_sign_up_afresh(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    assert client.delete("/api/v1/account", headers=bearer(token)).status_code == 204
    assert client.get("/api/v1/sessions", headers=bearer(token)).status_code == 401
    page = client.get("/signup")
    signed_up = client.post(
        "/signup",
        data={"csrf_token": factories.csrf(page.text), "login": pat.login, "password": PASSWORD},
        follow_redirects=False,
    )
    assert signed_up.status_code == 303, signed_up.text
    with runtime.sessions() as db:
        accounts = db.scalars(select(Account.id)).all()
    assert pat.account_id not in accounts and len(accounts) == 1


def test_stolen_session_cannot_delete_the_account_without_the_second_factor(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2)
    reauth = client.post("/api/v1/reauth", json={"password": PASSWORD}, headers=bearer(token))
    assert reauth.status_code == 400
    refused = client.delete("/api/v1/account", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["step_up"] == "reauth"
    assert _left_of(runtime, pat.account_id)["account"] == 1
    assert emails_to(runtime, pat.login) == []


def test_no_deletion_notice_goes_to_an_unverified_address(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime, verified=False)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    assert client.delete("/api/v1/account", headers=bearer(token)).status_code == 204
    assert emails_to(runtime, pat.login) == []


# Erasure requests made to the organization


def _operator(runtime: Runtime, scope: str, **overrides: str) -> dict[str, str]:
    claims = {"sub": "ops", "client_id": "ops", "scope": scope} | overrides
    return bearer(mint(runtime, **claims))


def test_admin_erasure_deletes_the_account_and_keeps_the_record(
    client: TestClient, runtime: Runtime, world: World
) -> None:
    pat, patient_id = _patient_with_a_record(client, runtime, world)
    path = f"/api/v1/admin/accounts/{pat.account_id}/erasure"
    erased = client.post(path, json=REASON, headers=_operator(runtime, "admin.accounts"))
    assert erased.status_code == 200, erased.text
    assert erased.json() == {
        "account_id": pat.account_id,
        "patient_id": patient_id,
        "notice_sent": True,
    }
    _assert_gone_but_record_kept(runtime, pat.account_id, patient_id)
    with runtime.sessions() as db:
        action = db.scalar(select(StaffAction).where(StaffAction.account_id == pat.account_id))
        assert action is not None
        assert (action.actor, action.reason) == ("client:ops", REASON["reason"])
    assert "identity.account.erasure" in _actions(runtime)
    assert [e["subject"] for e in emails_to(runtime, pat.login)] == ["Your account was deleted"]
    again = client.post(path, json=REASON, headers=_operator(runtime, "admin.accounts"))
    assert again.status_code == 404


def test_a_roster_operator_cannot_erase_accounts(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    path = f"/api/v1/admin/accounts/{pat.account_id}/erasure"
    roster_only = client.post(path, json=REASON, headers=_operator(runtime, "admin.roster"))
    assert roster_only.status_code == 403
    as_a_person = client.post(
        path, json=REASON, headers=_operator(runtime, "admin.accounts", sub="someone")
    )
    assert as_a_person.status_code == 403
    no_reason = client.post(
        path, json={"reason": " "}, headers=_operator(runtime, "admin.accounts")
    )
    assert no_reason.status_code == 400
    assert _left_of(runtime, pat.account_id)["account"] == 1


def test_cli_erasure(cli_env: Path, runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    pat = patient(runtime)
    code = main(
        ["accounts", "delete", "--account-id", pat.account_id, "--reason", REASON["reason"]]
    )
    assert code == 0
    assert f"account {pat.account_id} deleted" in capsys.readouterr().out
    assert _left_of(runtime, pat.account_id)["account"] == 0
    assert main(["accounts", "delete", "--account-id", pat.account_id, "--reason", "x"]) == 1
    assert "identity.account.erasure" in _actions(runtime)
