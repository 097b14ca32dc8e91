""" "I didn't sign up" on an e-mail verification link: pre-hijacking (a stranger signs up
with the victim's address; the owner, opening the link elsewhere, would finish the
stranger's sign-up with the stranger's password) is stopped by declining the link, which
cancels a sign-up nobody finished and tells nothing else."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import email_verification, signup_decline
from identity.flows import email_verification as verify
from identity.models import Account, EmailVerification, PasswordCredential
from tests.identity import factories
from tests.identity.test_email_verification import (
    FAST,
    LOGIN,
    PASSWORD,
    api_code,
    api_signup,
    count,
    existing_account,
    verified_at,
)
from tests.identity.verification_mail import code_in, last_email_to, link_token_in

STRANGER = {"login": LOGIN, "password": "an attacker's own words"}
NOTHING_CONFIRMED = "Nothing was confirmed."


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def decline(client: TestClient, token: str) -> str:
    page = client.get(f"/email/confirm?token={token}")
    data = {"csrf_token": factories.csrf(page.text), "token": token}
    answer = client.post("/email/decline", data=data)
    assert answer.status_code == 200, answer.text
    return answer.text


def actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def test_pre_hijacking_signup_is_refused_when_the_owner_declines_the_link(
    client: TestClient, runtime: Runtime
) -> None:
    assert client.post("/api/v1/signup", json=STRANGER).status_code == 202
    token = link_token_in(last_email_to(runtime, LOGIN))
    with TestClient(client.app) as owner:
        page = owner.get(f"/email/confirm?token={token}")
        # The page says plainly what confirming does, and offers the way out.
        assert "confirming also finishes that sign-up" in page.text
        assert "the password chosen when signing up" in page.text
        assert "I didn&#39;t sign up" in page.text or "I didn't sign up" in page.text
        assert NOTHING_CONFIRMED in decline(owner, token)
        assert owner.cookies.get("carebridge_session") is None
    # The stranger's account and its waiting password are gone; nothing signs in.
    assert count(runtime, Account) == 0
    assert count(runtime, EmailVerification) == 0
    assert count(runtime, PasswordCredential) == 0
    assert client.post("/api/v1/signin", json=STRANGER).status_code == 401
    assert "identity.signup.cancel" in actions(runtime)
    # The link is spent: confirming it afterwards finishes nothing.
    assert client.post("/api/v1/email/confirm", json={"token": token}).status_code == 400
    # The owner's own sign-up then works as any other.
    pending = api_signup(client).json()["pending_token"]
    assert api_code(client, pending, code_in(last_email_to(runtime, LOGIN))).status_code == 200
    owner_signin = {"login": LOGIN, "password": PASSWORD}
    assert client.post("/api/v1/signin", json=owner_signin).status_code == 200


def test_declining_an_existing_accounts_link_voids_it_and_deletes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    # An account from before verification (it has its password): its sign-in sends a link.
    account_id = existing_account(runtime, verified=False)
    signin = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert signin.status_code in (200, 202, 403), signin.text
    token = link_token_in(last_email_to(runtime, LOGIN))
    # The same answer as a cancelled sign-up's: nothing tells what the link was for.
    assert NOTHING_CONFIRMED in decline(client, token)
    with runtime.sessions() as db:
        assert db.get(Account, account_id) is not None
    assert verified_at(runtime) is None
    assert client.post("/api/v1/email/confirm", json={"token": token}).status_code == 400
    assert "identity.email.verify.declined" in actions(runtime)


def test_declining_a_finished_signups_or_an_unknown_link_is_refused_alike(
    client: TestClient, runtime: Runtime
) -> None:
    started = api_signup(client)
    email = last_email_to(runtime, LOGIN)
    pending, token = started.json()["pending_token"], link_token_in(email)
    assert api_code(client, pending, code_in(email)).status_code == 200
    used = client.post("/api/v1/email/decline", json={"token": token})
    unknown = client.post("/api/v1/email/decline", json={"token": "x" * 43})
    truncated = client.post("/api/v1/email/decline", json={"token": token[:-1]})
    assert used.status_code == unknown.status_code == truncated.status_code == 400
    assert used.json()["detail"] == unknown.json()["detail"] == truncated.json()["detail"]
    # The finished sign-up's account stays, and signs in.
    assert count(runtime, Account) == 1
    owner = {"login": LOGIN, "password": PASSWORD}
    assert client.post("/api/v1/signin", json=owner).status_code == 200


def test_api_decline_cancels_a_strangers_signup(client: TestClient, runtime: Runtime) -> None:
    assert client.post("/api/v1/signup", json=STRANGER).status_code == 202
    token = link_token_in(last_email_to(runtime, LOGIN))
    declined = client.post("/api/v1/email/decline", json={"token": token})
    assert declined.status_code == 204, declined.text
    assert count(runtime, Account) == 0


def test_declining_links_is_throttled_per_client_address(
    client: TestClient, runtime: Runtime
) -> None:
    answers = [
        client.post("/api/v1/email/decline", json={"token": f"unknown-{n:02d}" + "x" * 30})
        for n in range(30)
    ]
    assert answers[0].status_code == 400
    assert answers[-1].status_code == 429


def test_decline_racing_the_code_typed_in_the_signup_browser_does_not_deadlock(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner declines the link just as the code from the same e-mail is typed in the
    # sign-up's browser. The code's check holds the account's session lock when it claims
    # the link: the decline must not hold the link's row meanwhile, waiting for that lock.
    started = api_signup(client)
    email = last_email_to(runtime, LOGIN)
    pending, code, token = started.json()["pending_token"], code_in(email), link_token_in(email)
    outward = client.app.state.outward  # type: ignore[attr-defined]
    declined: list[BaseException | None] = []

    def decline_now() -> None:
        try:
            signup_decline.decline(runtime, outward, token, client_host="198.51.100.7")
            declined.append(None)
        except BaseException as error:  # noqa: BLE001  (the outcome is what is checked)
            declined.append(error)

    real_claim = email_verification.claim
    racing: list[threading.Thread] = []

    def decline_then_claim(*args: Any, **kwargs: Any) -> bool:
        if not racing:
            racing.append(threading.Thread(target=decline_now))
            racing[0].start()
            racing[0].join(timeout=1.5)  # as far as the code's transaction lets it go
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(email_verification, "claim", decline_then_claim)
    signed_in = verify.verify_code(runtime, pending, code, client_host=None)
    racing[0].join(timeout=30)
    monkeypatch.undo()

    assert not racing[0].is_alive()
    # The code came first: signed in; the decline then finds the link used.
    assert signed_in.account_id
    assert len(declined) == 1
    assert isinstance(declined[0], signup_decline.DeclineFailedError)
    assert count(runtime, Account) == 1
    assert verified_at(runtime) is not None
