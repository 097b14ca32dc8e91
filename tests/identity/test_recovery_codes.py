"""Recovery codes: ten, hashed, single use (also under concurrency), shown once."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import throttle
from identity.credentials import recovery
from identity.flows import signin
from identity.models import AuthSession, RecoveryCode
from tests.identity import factories


def _regenerate(runtime: Runtime, account_id: str, reveal_to: str | None = None) -> list[str]:
    with transaction(runtime.sessions) as db:
        return recovery.regenerate(db, runtime, account_id, reveal_to=reveal_to)


def _use(runtime: Runtime, account_id: str, code: str) -> bool:
    with transaction(runtime.sessions) as db:
        return recovery.use(db, runtime, account_id, code)


def _remaining(runtime: Runtime, account_id: str) -> int:
    with runtime.sessions() as db:
        return recovery.remaining(db, account_id)


def test_ten_distinct_grouped_codes_from_an_unambiguous_alphabet(runtime: Runtime) -> None:
    codes = _regenerate(runtime, factories.account(runtime))
    assert len(set(codes)) == 10
    for code in codes:
        assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}", code)


def test_only_keyed_hashes_of_the_codes_are_stored(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    codes = _regenerate(runtime, account_id)
    with runtime.sessions() as db:
        rows = db.scalars(select(RecoveryCode)).all()
    stored = {row.code_hash for row in rows}
    assert stored == {
        runtime.keyring.lookup_hash("recovery-code", code.replace("-", "")) for code in codes
    }
    assert all(row.reveal_encrypted is None for row in rows)  # nothing to reveal: not asked
    dump = " ".join(f"{row.id} {row.code_hash}" for row in rows)
    for code in codes:
        assert code.replace("-", "") not in dump.upper()


def test_a_recovery_code_works_once(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    code = _regenerate(runtime, account_id)[0]
    assert _use(runtime, account_id, code)
    assert not _use(runtime, account_id, code)
    assert _remaining(runtime, account_id) == 9


@pytest.mark.parametrize("typed", ["{c}", "{lower}", "{plain}", " {a} {b} ", "{a}--{b}"])
def test_typing_a_code_is_forgiving(runtime: Runtime, typed: str) -> None:
    account_id = factories.account(runtime)
    code = _regenerate(runtime, account_id)[0]
    a, b = code.split("-")
    attempt = typed.format(c=code, lower=code.lower(), plain=a + b, a=a, b=b)
    assert _use(runtime, account_id, attempt)


def test_look_alike_letters_read_as_digits(runtime: Runtime) -> None:
    assert recovery.normalise("o1i-l0 ab") == "0111" + "0AB"


@pytest.mark.parametrize("typed", ["", "ABCDE", "ABCDE-1234U", "ABCDE-12345-6", "ÀBCDE-12345"])
def test_malformed_codes_are_refused(runtime: Runtime, typed: str) -> None:
    account_id = factories.account(runtime)
    _regenerate(runtime, account_id)
    assert not _use(runtime, account_id, typed)
    assert _remaining(runtime, account_id) == 10


def test_another_accounts_code_is_refused(runtime: Runtime) -> None:
    mine, theirs = factories.account(runtime), factories.account(runtime)
    _regenerate(runtime, mine)
    their_code = _regenerate(runtime, theirs)[0]
    assert not _use(runtime, mine, their_code)
    assert _use(runtime, theirs, their_code)


def test_regenerating_replaces_every_code(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    old = _regenerate(runtime, account_id)
    assert _use(runtime, account_id, old[0])
    new = _regenerate(runtime, account_id)
    assert set(old).isdisjoint(new)
    assert not _use(runtime, account_id, old[1])
    assert _remaining(runtime, account_id) == 10
    assert _use(runtime, account_id, new[0])


def test_two_concurrent_uses_of_one_code_let_exactly_one_through(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    code = _regenerate(runtime, account_id)[0]
    first_holds_its_lock = threading.Event()
    results: dict[str, bool] = {}

    def second() -> None:
        first_holds_its_lock.wait(5)
        results["second"] = _use(runtime, account_id, code)

    thread = threading.Thread(target=second)
    thread.start()
    with transaction(runtime.sessions) as db:
        results["first"] = recovery.use(db, runtime, account_id, code)
        first_holds_its_lock.set()
        time.sleep(0.5)
    thread.join(10)
    assert results == {"first": True, "second": False}


def test_codes_are_revealed_once_and_only_to_the_session_that_made_them(
    runtime: Runtime,
) -> None:
    account_id = factories.account(runtime)
    codes = _regenerate(runtime, account_id, reveal_to="ses_mine")
    with runtime.sessions() as db:
        rows = db.scalars(select(RecoveryCode)).all()
    for row in rows:  # waiting to be shown: encrypted, never plain
        assert row.reveal_encrypted is not None
        for code in codes:
            assert code.replace("-", "").encode() not in row.reveal_encrypted
    with transaction(runtime.sessions) as db:
        assert recovery.reveal(db, runtime, account_id, "ses_other") == []
    with transaction(runtime.sessions) as db:
        assert recovery.reveal(db, runtime, account_id, "ses_mine") == sorted(codes)
    with transaction(runtime.sessions) as db:
        assert recovery.reveal(db, runtime, account_id, "ses_mine") == []
    with runtime.sessions() as db:
        assert all(r.reveal_encrypted is None for r in db.scalars(select(RecoveryCode)))
    assert _use(runtime, account_id, codes[0])  # shown or not, the codes still work


def test_api_regenerates_codes_once_recently_authenticated(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    old = _regenerate(runtime, account_id)
    token = factories.session(runtime, account_id, level=2, stepped_up=True)
    bearer = {"authorization": f"Bearer {token}"}

    response = client.post("/api/v1/mfa/recovery-codes", headers=bearer)
    assert response.status_code == 200
    codes = response.json()["recovery_codes"]
    assert len(codes) == 10
    assert set(codes).isdisjoint(old)
    with runtime.sessions() as db:
        stored = set(db.scalars(select(RecoveryCode.code_hash)))
        assert not any(code.replace("-", "") in str(stored) for code in codes)
        assert recovery.remaining(db, account_id) == 10


def test_api_regeneration_needs_a_recent_sign_in(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    old = _regenerate(runtime, account_id)
    token = factories.session(runtime, account_id, level=2, stepped_up=True)
    with transaction(runtime.sessions) as db:
        stale = datetime.now(UTC) - timedelta(hours=1)
        db.execute(update(AuthSession).values(authenticated_at=stale, stepped_up_at=stale))
    response = client.post(
        "/api/v1/mfa/recovery-codes", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    assert "reauth" in response.json()["detail"]
    with runtime.sessions() as db:
        assert recovery.remaining(db, account_id) == len(old)


def test_regenerating_codes_in_a_loop_is_refused(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new set ends the other sessions and e-mails the owner: a stepped-up session
    regenerating in a loop gets 5 free and one that earns a delay, then sign-in's uniform
    refusal for that delay, and the codes stay."""
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2, stepped_up=True)
    bearer = {"authorization": f"Bearer {token}"}
    codes: list[str] = []
    for _ in range(throttle.RECOVERY_CODES_ACCOUNT.free + 1):
        response = client.post("/api/v1/mfa/recovery-codes", headers=bearer)
        assert response.status_code == 200
        codes = response.json()["recovery_codes"]
    refused = client.post("/api/v1/mfa/recovery-codes", headers=bearer)
    assert refused.status_code == 429
    assert refused.json()["detail"] == signin.TOO_MANY
    # The page says the same to a person.
    factories.sign_in(client, runtime, account_id, level=2, stepped_up=True)
    page = client.get("/account/security")
    form = client.post(
        "/account/security/recovery-codes",
        data={"csrf_token": factories.csrf(page.text)},
        follow_redirects=False,
    )
    assert form.status_code == 429
    assert "Too many attempts" in form.text
    assert _use(runtime, account_id, codes[0])  # the last set given out still works
