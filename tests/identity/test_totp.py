"""TOTP: the window, single use (also under concurrency), encryption at rest, enrolment."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
from sqlalchemy import select, text

from carebridge.db import transaction
from carebridge.keyring import DecryptionError, associated_data
from carebridge.runtime import Runtime
from identity.credentials import totp
from identity.models import TotpCredential
from tests.identity import factories

# 15 s into a time step, so "one step away" is unambiguous.
T = 60_000_000 * 30 + 15
# The handle of the session enrolling (a seed being enrolled is bound to it).
OWNER = "ses_enrolling"


def _verify(runtime: Runtime, account_id: str, code: str, at: float = T) -> bool:
    with transaction(runtime.sessions) as db:
        return totp.verify(db, runtime, account_id, code, at=at)


@pytest.mark.parametrize("offset", [-30, 0, 30])
def test_code_one_step_either_side_is_accepted(runtime: Runtime, offset: int) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    assert _verify(runtime, account_id, app.at(T + offset))


@pytest.mark.parametrize("offset", [-60, 60, -90, 90])
def test_code_two_or_more_steps_away_is_refused(runtime: Runtime, offset: int) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    assert not _verify(runtime, account_id, app.at(T + offset))


def test_replayed_totp_code_is_refused(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    code = app.at(T)
    assert _verify(runtime, account_id, code)
    assert not _verify(runtime, account_id, code)
    assert not _verify(runtime, account_id, code, at=T + 20)  # still in the window: still used


def test_an_older_step_after_a_newer_one_is_refused(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    assert _verify(runtime, account_id, app.at(T + 30))
    assert not _verify(runtime, account_id, app.at(T))
    assert _verify(runtime, account_id, app.at(T + 60), at=T + 30)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦"])
def test_malformed_codes_are_refused(runtime: Runtime, code: str) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    assert not _verify(runtime, account_id, code)


def test_code_with_a_space_in_the_middle_is_accepted(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    code = factories.totp(runtime, account_id).at(T)
    assert _verify(runtime, account_id, f"{code[:3]} {code[3:]}")


def test_another_accounts_code_is_refused(runtime: Runtime) -> None:
    mine, theirs = factories.account(runtime), factories.account(runtime)
    factories.totp(runtime, mine)
    their_app = factories.totp(runtime, theirs)
    assert not _verify(runtime, mine, their_app.at(T))


def test_two_concurrent_submissions_of_one_code_let_exactly_one_through(
    runtime: Runtime,
) -> None:
    """The first request has recorded the step but not committed when the second checks.

    A read-then-write check would let the second through (it still reads the old step);
    the conditional UPDATE waits for the first's row lock and then matches nothing.
    """
    account_id = factories.account(runtime)
    code = factories.totp(runtime, account_id).at(T)
    first_holds_its_lock = threading.Event()
    results: dict[str, bool] = {}

    def second() -> None:
        first_holds_its_lock.wait(5)
        results["second"] = _verify(runtime, account_id, code)

    thread = threading.Thread(target=second)
    thread.start()
    with transaction(runtime.sessions) as db:
        results["first"] = totp.verify(db, runtime, account_id, code, at=T)
        first_holds_its_lock.set()
        time.sleep(0.5)  # the second request is now checking, or waiting on the lock
    thread.join(10)
    assert results == {"first": True, "second": False}


def test_many_threads_submitting_one_code_let_exactly_one_through(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    code = factories.totp(runtime, account_id).at(T)
    barrier = threading.Barrier(6)
    outcomes: list[bool] = []

    def submit() -> None:
        barrier.wait(5)
        outcomes.append(_verify(runtime, account_id, code))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(outcomes) == [False] * 5 + [True]


def test_secret_is_stored_encrypted_and_bound_to_its_account(
    runtime: Runtime, backend: str
) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    secret = enrolment.secret
    raw = base64.b32decode(secret)
    assert len(raw) * 8 == 160
    with runtime.sessions() as db:
        row = db.get(TotpCredential, account_id)
        assert row is not None
        blob = row.secret_encrypted
        if backend == "postgresql":
            dump = db.execute(text("SELECT CAST(t AS text) FROM totp_credential t")).scalar_one()
            assert secret not in dump
            assert raw.hex() not in dump
    assert secret.encode() not in blob
    assert raw not in blob
    aad = associated_data("totp-enrolment", account_id, OWNER)
    assert runtime.keyring.decrypt(blob, aad) == secret.encode()
    with pytest.raises(DecryptionError):  # moved to another account's row, it won't open
        runtime.keyring.decrypt(blob, associated_data("totp-enrolment", "acc_else", OWNER))
    with pytest.raises(DecryptionError):  # nor for another session of the same account
        runtime.keyring.decrypt(blob, associated_data("totp-enrolment", account_id, "ses_else"))
    if backend == "sqlite":
        runtime.engine.dispose()  # fold the WAL into the file
        path = Path(runtime.settings.effective_database_url.removeprefix("sqlite:///"))
        data = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert secret.encode() not in data
        assert raw not in data


def test_enrolment_requires_a_valid_first_code(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    app = pyotp.TOTP(enrolment.secret)
    with transaction(runtime.sessions) as db:
        valid = {app.at(T + offset) for offset in (-30, 0, 30)}
        wrong = next(f"{n:06d}" for n in range(10) if f"{n:06d}" not in valid)
        assert not totp.confirm(db, runtime, account_id, wrong, owner=OWNER, at=T)
        assert not totp.verify(db, runtime, account_id, app.at(T), at=T)  # not active yet
    with runtime.sessions() as db:
        row = db.get(TotpCredential, account_id)
        assert row is not None
        assert row.confirmed_at is None
    with transaction(runtime.sessions) as db:
        assert totp.confirm(db, runtime, account_id, app.at(T), owner=OWNER, at=T)
    with transaction(runtime.sessions) as db:
        # The confirming code is used up; the next step's code passes.
        assert not totp.verify(db, runtime, account_id, app.at(T), at=T)
        assert totp.verify(db, runtime, account_id, app.at(T + 30), at=T)


def test_a_code_confirms_an_enrolment_once(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    code = pyotp.TOTP(enrolment.secret).at(T)
    with transaction(runtime.sessions) as db:
        assert totp.confirm(db, runtime, account_id, code, owner=OWNER, at=T)
    with transaction(runtime.sessions) as db:
        assert not totp.confirm(db, runtime, account_id, code, owner=OWNER, at=T)


def test_reloading_enrolment_keeps_the_seed_and_restarting_replaces_it(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        first = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    with transaction(runtime.sessions) as db:
        again = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    with transaction(runtime.sessions) as db:
        restarted = totp.begin(db, runtime, account_id, restart=True, owner=OWNER)
    assert (first.created, again.created, restarted.created) == (True, False, True)
    assert again.secret == first.secret
    assert restarted.secret != first.secret
    with transaction(runtime.sessions) as db:  # the abandoned seed confirms nothing
        assert not totp.confirm(
            db, runtime, account_id, pyotp.TOTP(first.secret).at(T), owner=OWNER, at=T
        )


def test_replacement_keeps_the_old_seed_until_the_new_one_is_confirmed(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    old_app = factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    assert enrolment.replacing
    new_app = pyotp.TOTP(enrolment.secret)
    assert _verify(runtime, account_id, old_app.at(T))
    assert not _verify(runtime, account_id, new_app.at(T + 30))  # not confirmed yet
    with transaction(runtime.sessions) as db:
        assert totp.confirm(db, runtime, account_id, new_app.at(T + 30), owner=OWNER, at=T + 30)
    assert not _verify(runtime, account_id, old_app.at(T + 60), at=T + 60)
    assert _verify(runtime, account_id, new_app.at(T + 60), at=T + 60)
    with runtime.sessions() as db:
        row = db.scalars(select(TotpCredential)).one()
        assert row.pending_encrypted is None


def test_uri_names_the_issuer_and_a_hint_never_an_email(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    parts = urlsplit(enrolment.uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == f"/carebridge:{enrolment.label}"
    assert len(enrolment.label) == 6
    assert account_id not in enrolment.uri
    assert "@" not in unquote(enrolment.uri)
    query = parse_qs(parts.query)
    assert query["issuer"] == ["carebridge"]
    assert query["secret"] == [enrolment.secret]
    assert enrolment.grouped_secret.replace(" ", "") == enrolment.secret


def test_qr_code_is_an_svg_image_in_a_data_uri(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        enrolment = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    prefix = "data:image/svg+xml;base64,"
    assert enrolment.qr_data_uri.startswith(prefix)
    svg = base64.b64decode(enrolment.qr_data_uri.removeprefix(prefix)).decode()
    assert svg.startswith("<svg")
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert "<script" not in svg


def test_another_session_can_neither_see_nor_confirm_a_seed_being_enrolled(
    runtime: Runtime,
) -> None:
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        mine = totp.begin(db, runtime, account_id, restart=False, owner=OWNER)
    code = pyotp.TOTP(mine.secret).at(T)
    with transaction(runtime.sessions) as db:
        assert not totp.confirm(db, runtime, account_id, code, owner="ses_other", at=T)
    with transaction(runtime.sessions) as db:
        theirs = totp.begin(db, runtime, account_id, restart=False, owner="ses_other")
    assert theirs.created and theirs.secret != mine.secret
    with transaction(runtime.sessions) as db:  # and the seed it replaced confirms nothing
        assert not totp.confirm(db, runtime, account_id, code, owner=OWNER, at=T)
    with transaction(runtime.sessions) as db:
        confirmed = pyotp.TOTP(theirs.secret).at(T)
        assert totp.confirm(db, runtime, account_id, confirmed, owner="ses_other", at=T)
    # Once confirmed the seed is the account's, whichever session signs in with it.
    assert _verify(runtime, account_id, pyotp.TOTP(theirs.secret).at(T + 30))
