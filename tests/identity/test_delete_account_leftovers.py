"""Deleting an account leaves nothing queued or counted for it: the e-mails not yet sent
to any of its addresses are withdrawn (the "your account was deleted" notice still goes
out), sms's unsent notifications for the patient are suppressed, and the throttle
counters keyed by the account ID are gone. Self-service and the admin erasure, both
databases."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge import mail
from carebridge.db import transaction
from carebridge.keyring import associated_data
from carebridge.outbox import OutboxMessage
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import accounts, throttle
from identity.flows import mfa
from identity.models import EmailVerification, ThrottleCounter
from sms import outbox as sms_outbox
from sms.models import Notification
from tests.identity import factories
from tests.identity.account_changes import bearer, emails_to, patient
from tests.identity.roster_helpers import link
from tests.messaging.conftest import World, build_world
from tests.tokens import mint

NEW_ADDRESS = "pat.new@example.org"
STRANGER = "someone.else@example.org"


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


def _queue_leftovers(runtime: Runtime, account_id: str, login: str, patient_id: str) -> None:
    """What a live account has queued and counted: e-mails to its login and to an address
    being verified, an SMS notification, throttle counters under its ID."""
    sender = mail.OutboxEmailSender(runtime)
    now = utcnow()
    with transaction(runtime.sessions) as db:
        sender.send_email(db, to=login, subject="Your password was changed", text="...")
        # Another spelling of the same address is the same recipient.
        sender.send_email(db, to=login.upper(), subject="Recovery started", text="...")
        sender.send_email(db, to=NEW_ADDRESS, subject="Confirm your address", text="...")
        db.add(
            EmailVerification(
                id="ev_pending",
                account_id=account_id,
                purpose="add",
                token_hash="t" * 64,
                code_hash="c" * 64,
                address_hash=accounts.login_hash(runtime.keyring, NEW_ADDRESS),
                address_encrypted=runtime.keyring.encrypt(
                    NEW_ADDRESS.encode(), associated_data("login", account_id)
                ),
                created_at=now,
                expires_at=now + timedelta(hours=24),
            )
        )
        sms_outbox.enqueue(db, patient_id=patient_id, kind=sms_outbox.NEW_MESSAGE)
        store = throttle.store_for(runtime.settings)
        for policy in (*throttle.KEYED_BY_ACCOUNT, mfa.SECOND_STEP):
            store.attempt(db, [throttle.account_limit(policy, account_id)], now)


def _counters_of(runtime: Runtime, account_id: str) -> int:
    with runtime.sessions() as db:
        return (
            db.scalar(
                select(func.count())
                .select_from(ThrottleCounter)
                .where(ThrottleCounter.key.like(f"%:{account_id}"))
            )
            or 0
        )


def _pending_sms(runtime: Runtime, patient_id: str) -> int:
    with runtime.sessions() as db:
        return (
            db.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.patient_id == patient_id, Notification.state == "pending")
            )
            or 0
        )


@pytest.mark.parametrize("how", ["self", "erasure"])
def test_deletion_leaves_nothing_queued_or_counted_for_the_account(
    client: TestClient, runtime: Runtime, world: World, how: str
) -> None:
    pat = patient(runtime)
    patient_id = world.patients["pip"]
    link(runtime, pat.account_id, patient_id)
    _queue_leftovers(runtime, pat.account_id, pat.login, patient_id)
    other = world.patients["zeb"]
    with transaction(runtime.sessions) as db:
        sms_outbox.enqueue(db, patient_id=other, kind=sms_outbox.NEW_MESSAGE)
    assert _counters_of(runtime, pat.account_id) == len(throttle.KEYED_BY_ACCOUNT) + 1
    assert _pending_sms(runtime, patient_id) == 1

    if how == "self":
        token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
        assert client.delete("/api/v1/account", headers=bearer(token)).status_code == 204
    else:
        operator = bearer(mint(runtime, sub="ops", client_id="ops", scope="admin.accounts"))
        erased = client.post(
            f"/api/v1/admin/accounts/{pat.account_id}/erasure",
            json={"reason": "erasure request 2026-114"},
            headers=operator,
        )
        assert erased.status_code == 200, erased.text

    assert _counters_of(runtime, pat.account_id) == 0
    assert _pending_sms(runtime, patient_id) == 0
    assert _pending_sms(runtime, other) == 1  # another patient's stays queued
    with runtime.sessions() as db:
        reasons = db.scalars(
            select(Notification.reason).where(Notification.patient_id == patient_id)
        ).all()
    assert reasons == ["account_deleted"]
    # Delivering the outbox now (each e-mail is read once, so one look for both):
    # the deletion notice is all the account's addresses get.
    with runtime.sessions() as db:
        queued = db.scalars(select(OutboxMessage.channel).where(OutboxMessage.channel == "email"))
        assert len(queued.all()) == 1  # to the login, to the new address: only the notice
    sent = emails_to(runtime, pat.login)
    assert [e["subject"] for e in sent] == ["Your account was deleted"]


def test_a_strangers_queued_email_survives_the_deletion(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    with transaction(runtime.sessions) as db:
        mail.OutboxEmailSender(runtime).send_email(
            db, to=STRANGER, subject="Not theirs", text="..."
        )
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    assert client.delete("/api/v1/account", headers=bearer(token)).status_code == 204
    assert [e["subject"] for e in emails_to(runtime, STRANGER)] == ["Not theirs"]


def test_withdrawing_another_accounts_mail_by_deleting_an_account_that_typed_its_address_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    # The victim's recovery notice waits in the outbox (the mail server is down, say).
    patient(runtime, login=STRANGER)
    with transaction(runtime.sessions) as db:
        mail.OutboxEmailSender(runtime).send_email(
            db, to=STRANGER, subject="Recovery started", text="..."
        )
    # The intruder asks to add the victim's address to their own account, then deletes it.
    pat = patient(runtime)
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.add(
            EmailVerification(
                id="ev_typed",
                account_id=pat.account_id,
                purpose="add",
                token_hash="t" * 64,
                code_hash="c" * 64,
                address_hash=accounts.login_hash(runtime.keyring, STRANGER),
                address_encrypted=runtime.keyring.encrypt(
                    STRANGER.encode(), associated_data("login", pat.account_id)
                ),
                created_at=now,
                expires_at=now + timedelta(hours=24),
            )
        )
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    assert client.delete("/api/v1/account", headers=bearer(token)).status_code == 204
    assert [e["subject"] for e in emails_to(runtime, STRANGER)] == ["Recovery started"]
