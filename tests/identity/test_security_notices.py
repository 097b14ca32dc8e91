"""Security notices by e-mail, to the account's address only once verified: a second
factor added or removed, recovery codes regenerated (a changed password and a deleted
account: test_change_password.py, test_delete_account.py; a linked sign-in method:
test_upstream.py). Links only: no name, no patient details. Both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.credentials import totp
from tests.identity import factories
from tests.identity.account_changes import bearer, emails_to, patient, post_form


@pytest.fixture
def optional_mfa(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime.build(
        Settings(data_dir=tmp_path / "data", database_url=database_url, mfa_required=False)
    )
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client, runtime
    runtime.close()


def _subjects(runtime: Runtime, address: str) -> list[str]:
    return [email["subject"] for email in emails_to(runtime, address)]


def test_a_new_authenticator_is_announced(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    enrolment = client.post("/api/v1/mfa/totp/enroll", headers=bearer(token))
    assert enrolment.status_code == 200
    code = pyotp.TOTP(enrolment.json()["secret"]).now()
    confirmed = client.post("/api/v1/mfa/totp/confirm", json={"code": code}, headers=bearer(token))
    assert confirmed.status_code == 200
    (notice,) = emails_to(runtime, pat.login)
    assert notice["subject"] == "A second sign-in step was added to your account"
    assert "/password/forgot" in notice["text"]
    assert '<a href="http://127.0.0.1:8000/password/forgot">' in notice["html"]


def test_regenerated_recovery_codes_are_announced(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    made = client.post("/api/v1/mfa/recovery-codes", headers=bearer(token))
    assert made.status_code == 200
    notices = emails_to(runtime, pat.login)
    assert [n["subject"] for n in notices] == ["New recovery codes were made for your account"]
    # The codes themselves never travel by e-mail.
    assert not any(code in notices[0]["text"] for code in made.json()["recovery_codes"])


def test_turning_two_step_verification_off_is_announced(
    optional_mfa: tuple[TestClient, Runtime],
) -> None:
    client, runtime = optional_mfa
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    removed = post_form(client, "/account/security", "/account/security/totp/remove", {})
    assert removed.headers["location"] == "/account/security?done=removed"
    with runtime.sessions() as db:
        assert totp.confirmed(db, pat.account_id) is None
    assert _subjects(runtime, pat.login) == ["Two-step verification was turned off"]


def test_no_notice_goes_to_an_unverified_address(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime, verified=False)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    assert client.post("/api/v1/mfa/recovery-codes", headers=bearer(token)).status_code == 200
    assert emails_to(runtime, pat.login) == []
