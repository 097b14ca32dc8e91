"""Identity verification (DOB + SSN last 4 against the roster): linking, one answer for
every failure, the tie-breaker, the step-up to last name and ZIP, concurrent claims,
guessing resistance that locks out nobody but the guessing account (both backends)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.wiring import CareTeamFollowers
from identity import sessions
from identity.flows import verify
from identity.models import PatientLink, RosterMember
from identity.roster import importer
from identity.roster.hashes import RosterHashes
from tests.realparts import require

from . import factories

HEADER = "first_name,last_name,dob,ssn4,zip,group,member_id,status"
ZEB = ["Zebediah", "Quillfeather", "1961-03-14", "4821", "02139", "Acme", "QX-1", ""]
# Two people sharing a DOB and SSN last 4, told apart by last name (or ZIP).
TWIN_A = ["Ada", "Marchbank", "1975-07-04", "0193", "94110", "Acme", "QX-2", ""]
TWIN_B = ["Bea", "Fennimore", "1975-07-04", "0193", "60614", "Acme", "QX-3", ""]
GONE = ["Gus", "Ravensworth", "1980-01-02", "5555", "10001", "Acme", "QX-4", "terminated"]
TAKEN = ["Tia", "Ollerenshaw", "1990-12-01", "7350", "60614", "Acme", "QX-5", ""]
ROSTER = [ZEB, TWIN_A, TWIN_B, GONE, TAKEN]
FULL_SSN = "078051120"
REQUEST_ID = "verify-test-request"


def load_roster(runtime: Runtime, tmp_path: Path, rows: list[list[str]] = ROSTER) -> None:
    path = tmp_path / "roster.csv"
    path.write_text("\n".join([HEADER, *(",".join(row) for row in rows)]) + "\n")
    importer.import_roster(runtime, path, source="acme", followers=CareTeamFollowers())


def patient_of(runtime: Runtime, member_id_row: list[str]) -> str:
    """The patient ID of a roster person, found the way verification finds them."""
    hashes = RosterHashes(runtime.keyring)
    identity = hashes.identity(date.fromisoformat(member_id_row[2]), member_id_row[3])
    last = hashes.last_name(member_id_row[1])
    with runtime.sessions() as db:
        return db.scalars(
            select(RosterMember.patient_id).where(
                RosterMember.identity_hash == identity, RosterMember.last_name_hash == last
            )
        ).one()


def signed_in_account(runtime: Runtime) -> tuple[str, str]:
    account_id = factories.account(runtime)
    return account_id, factories.session(runtime, account_id, level=sessions.SECOND_FACTOR)


def api(client: TestClient, token: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": REQUEST_ID}
    return client.post("/api/v1/verify", json=body, headers=headers)


def person(row: list[str], **extra: str) -> dict[str, str]:
    return {"dob": row[2], "ssn4": row[3], **extra}


def link_of(runtime: Runtime, account_id: str) -> str | None:
    with runtime.sessions() as db:
        link = db.get(PatientLink, account_id)
        return link.patient_id if link else None


def links(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(PatientLink)) or 0)


def audits(runtime: Runtime) -> list[AuditRecord]:
    with runtime.sessions() as db:
        return list(
            db.scalars(
                select(AuditRecord)
                .where(AuditRecord.action.startswith("identity.verify"))
                .order_by(AuditRecord.seq)
            )
        )


@pytest.fixture
def roster(runtime: Runtime, tmp_path: Path) -> None:
    load_roster(runtime, tmp_path)


# Linking


def test_exactly_one_match_links_the_account_and_audits_it(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id, token = signed_in_account(runtime)
    response = api(client, token, person(ZEB))
    assert response.status_code == 200
    assert response.json() == {"status": "verified"}
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)
    (record,) = audits(runtime)
    assert record.outcome == "allowed"
    assert record.target == f"account:{account_id} patient:{patient_of(runtime, ZEB)}"


def test_the_page_links_and_the_account_page_says_verified(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    page = client.get("/verify")
    assert page.status_code == 200
    assert 'autocomplete="bday-day"' in page.text and 'for="ssn4"' in page.text
    assert "Your identity is verified" not in client.get("/account").text
    form = {"csrf_token": factories.csrf(page.text), "ssn4": ZEB[3]}
    form |= {"dob_day": "14", "dob_month": "3", "dob_year": "1961"}
    response = client.post("/verify", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)
    home = client.get("/account").text
    assert "Your identity is verified" in home
    assert patient_of(runtime, ZEB) not in home
    assert "Your identity is verified" in client.get("/verify").text


def test_a_verified_account_cannot_verify_again(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id, token = signed_in_account(runtime)
    assert api(client, token, person(ZEB)).status_code == 200
    again = api(client, token, person(TAKEN))
    assert again.status_code == 409
    assert again.json()["detail"] == verify.ALREADY
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


# One answer for every failure


def test_every_failure_kind_gets_byte_identical_answers(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    _, first = signed_in_account(runtime)
    assert api(client, first, person(TAKEN)).status_code == 200
    cases = {
        "no such person": {"dob": "1961-03-14", "ssn4": "9999"},
        "ineligible": person(GONE),
        "claimed by another account": person(TAKEN),
        "ambiguous": person(TWIN_A),
    }
    without: dict[str, tuple[int, bytes]] = {}
    with_tiebreaker: dict[str, tuple[int, bytes]] = {}
    for name, body in cases.items():
        _, token = signed_in_account(runtime)
        response = api(client, token, body)
        without[name] = (response.status_code, response.content)
        if name != "ambiguous":
            _, token = signed_in_account(runtime)
            response = api(client, token, {**body, "last_name": "Nobody"})
            with_tiebreaker[name] = (response.status_code, response.content)
    _, token = signed_in_account(runtime)
    wrong = api(client, token, person(TWIN_A, last_name="Nobody"))
    with_tiebreaker["ambiguous, wrong tie-breaker"] = (wrong.status_code, wrong.content)

    assert len(set(without.values())) == 1, without
    status, body = next(iter(without.values()))
    assert status == 422 and b'"tiebreaker":"last_name"' in body
    assert len(set(with_tiebreaker.values())) == 1, with_tiebreaker
    status, body = next(iter(with_tiebreaker.values()))
    assert status == 422 and verify.FAILED.encode() in body
    assert links(runtime) == 1


def test_failures_take_about_the_same_time(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    def timed(body: dict[str, str]) -> float:
        samples = []
        for _ in range(3):
            _, token = signed_in_account(runtime)
            started = time.perf_counter()
            api(client, token, body)
            samples.append(time.perf_counter() - started)
        return min(samples)

    _, first = signed_in_account(runtime)
    api(client, first, person(TAKEN))
    # Last name and ZIP on every path: each is checked, stepped up or not.
    times = [
        timed({"dob": "1961-03-14", "ssn4": "9999", "last_name": "X", "zip": "00000"}),
        timed(person(GONE, last_name="X", zip="00000")),
        timed(person(TAKEN, last_name=TAKEN[1], zip=TAKEN[4])),
        timed(person(TWIN_A, last_name="X", zip="00000")),
    ]
    # Loose: the same queries and hashes on every path, so within noise of each other.
    assert max(times) < 3 * min(times) + 0.05, times


def step_up_this_address(client: TestClient, runtime: Runtime) -> None:
    """Ten failures from the test client's address: from then on it must give last name
    and ZIP as well (identity.flows.verify.STEP_UP_ADDRESS)."""
    for n in range(verify.STEP_UP_ADDRESS):
        _, token = signed_in_account(runtime)
        body = {"dob": f"1940-02-{n + 1:02d}", "ssn4": "0000", "last_name": "X", "zip": "00000"}
        assert api(client, token, body).status_code == 422


def test_stepped_up_every_pair_gets_the_same_answer_real_or_not(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    _, first = signed_in_account(runtime)
    assert api(client, first, person(TAKEN)).status_code == 200
    step_up_this_address(client, runtime)
    cases = {
        "no such person": {"dob": "1961-03-14", "ssn4": "9999"},
        "ineligible": person(GONE),
        "claimed by another account": person(TAKEN),
        "ambiguous": person(TWIN_A),
        "exactly one, unclaimed": person(ZEB),
    }
    answers: dict[str, tuple[int, bytes]] = {}
    for name, body in cases.items():
        for extra in ({}, {"last_name": "Nobody"}, {"zip": "99999"}):
            account_id, token = signed_in_account(runtime)
            response = api(client, token, {**body, **extra})
            answers[f"{name} {extra}"] = (response.status_code, response.content)
            assert link_of(runtime, account_id) is None
    assert len(set(answers.values())) == 1, answers
    status, body = next(iter(answers.values()))
    assert status == 422 and verify.MORE_PROOF.encode() in body
    assert b'"needs":["last_name","zip"]' in body and b"tiebreaker" not in body
    # With both, one failure answer for every failure kind, and the real person links.
    wrong = {
        name: api(client, signed_in_account(runtime)[1], {**b, "last_name": "No", "zip": "99999"})
        for name, b in cases.items()
    }
    assert {(r.status_code, r.content) for r in wrong.values()} == {
        (wrong["ineligible"].status_code, wrong["ineligible"].content)
    }
    assert wrong["ineligible"].json()["detail"] == verify.FAILED
    account_id, token = signed_in_account(runtime)
    assert api(client, token, person(ZEB, last_name=ZEB[1], zip=ZEB[4])).status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


def test_asking_for_more_proof_is_not_counted_against_the_account(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    step_up_this_address(client, runtime)
    account_id, token = signed_in_account(runtime)
    for _ in range(8):  # more than the account's five failures
        answer = api(client, token, person(ZEB))
        assert answer.status_code == 422 and answer.json()["needs"] == ["last_name", "zip"]
    assert api(client, token, person(ZEB, last_name=ZEB[1], zip=ZEB[4])).status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


def test_the_ambiguous_pair_asks_for_the_tiebreaker_then_links(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id, token = signed_in_account(runtime)
    first = api(client, token, person(TWIN_B))
    assert first.status_code == 422 and first.json()["tiebreaker"] == "last_name"
    assert first.json()["needs"] == ["last_name"]
    assert api(client, token, person(TWIN_B, last_name="fennimore ")).status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, TWIN_B)


def test_the_zip_tiebreaker_when_configured(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, verify_tiebreaker="zip"
    )
    runtime = Runtime.build(settings)
    try:
        load_roster(runtime, tmp_path)
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            account_id, token = signed_in_account(runtime)
            first = api(client, token, person(TWIN_A))
            assert first.json()["tiebreaker"] == "zip"
            assert api(client, token, person(TWIN_A, zip="11111")).status_code == 422
            _, other = signed_in_account(runtime)
            assert api(client, other, person(TWIN_A, zip="94110")).status_code == 200
            assert link_of(runtime, account_id) is None
    finally:
        runtime.close()


def test_the_page_tiebreaker_step_never_refills_the_ssn(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    token = factories.csrf(client.get("/verify").text)
    form = {"csrf_token": token, "ssn4": TWIN_A[3]}
    form |= {"dob_day": "4", "dob_month": "7", "dob_year": "1975"}
    step = client.post("/verify", data=form)
    assert step.status_code == 422
    assert 'for="last_name"' in step.text and verify.NEED_MORE in step.text
    assert 'for="zip"' not in step.text
    assert f'value="{TWIN_A[3]}"' not in step.text
    form |= {"last_name": "Marchbank"}
    assert client.post("/verify", data=form, follow_redirects=False).status_code == 303
    assert link_of(runtime, account_id) == patient_of(runtime, TWIN_A)


def test_the_page_asks_for_last_name_and_zip_when_stepped_up_and_keeps_what_was_typed(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    step_up_this_address(client, runtime)
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    page = client.get("/verify")
    assert 'for="last_name"' not in page.text and 'for="zip"' not in page.text
    form = {"csrf_token": factories.csrf(page.text), "ssn4": ZEB[3]}
    form |= {"dob_day": "14", "dob_month": "3", "dob_year": "1961"}
    step = client.post("/verify", data=form)
    assert step.status_code == 422
    text = step.text.replace("&#39;", "'")
    assert verify.MORE_PROOF in text
    assert 'for="last_name"' in text and 'for="zip"' in text
    assert 'value="14"' in text and 'value="1961"' in text
    assert f'value="{ZEB[3]}"' not in text
    # A wrong ZIP: both fields come back as typed (escaped), the SSN does not.
    typed = form | {"last_name": "<Quill>feather", "zip": "02138"}
    wrong = client.post("/verify", data=typed)
    assert wrong.status_code == 422 and verify.FAILED in wrong.text.replace("&#39;", "'")
    assert 'value="&lt;Quill&gt;feather"' in wrong.text and 'value="02138"' in wrong.text
    assert f'value="{ZEB[3]}"' not in wrong.text
    done = client.post("/verify", data=form | {"last_name": ZEB[1], "zip": ZEB[4]})
    assert done.status_code == 200 and "Your identity is verified" in done.text
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


def test_a_patient_whose_roster_details_are_out_of_date_is_told_to_ask_for_an_activation_code(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    # Stepped up, a patient who moved or married since the roster was made cannot give
    # the last name and ZIP it holds: the answer must say what to do then.
    step_up_this_address(client, runtime)
    _, token = signed_in_account(runtime)
    answer = api(client, token, person(ZEB))
    assert answer.status_code == 422 and answer.json()["needs"] == ["last_name", "zip"]
    assert "activation code" in answer.json()["detail"]
    assert answer.json()["activate"] == "/api/v1/activate"
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    form = {"csrf_token": factories.csrf(client.get("/verify?next=/messages").text)}
    form |= {"ssn4": ZEB[3], "dob_day": "14", "dob_month": "3", "dob_year": "1961"}
    page = client.post("/verify", data=form | {"next": "/messages"})
    assert page.status_code == 422
    text = page.text.replace("&#39;", "'")
    assert verify.MORE_PROOF in text and "activation code" in verify.MORE_PROOF
    assert 'href="/activate?next=%2Fmessages"' in text


def test_always_asking_for_last_name_and_zip_when_configured(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, verify_step_up_after=0
    )
    runtime = Runtime.build(settings)
    try:
        load_roster(runtime, tmp_path)
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            account_id = factories.account(runtime)
            factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
            page = client.get("/verify").text
            assert 'for="last_name"' in page and 'for="zip"' in page
            _, token = signed_in_account(runtime)
            first = api(client, token, person(ZEB))
            assert first.status_code == 422 and first.json()["needs"] == ["last_name", "zip"]
            assert api(client, token, person(ZEB, last_name=ZEB[1], zip=ZEB[4])).status_code == 200
    finally:
        runtime.close()


# Concurrent claims


def test_two_concurrent_claims_of_one_patient_exactly_one_wins(
    runtime: Runtime, roster: None
) -> None:
    accounts = [factories.account(runtime) for _ in range(2)]
    details = verify.VerifyDetails.model_validate(person(ZEB))
    barrier = threading.Barrier(2)
    results: list[verify.Result] = []

    def claim(account_id: str) -> None:
        barrier.wait()
        results.append(verify.verify(runtime, account_id, details, client_host="192.0.2.1"))

    threads = [threading.Thread(target=claim, args=(a,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted([verify.Result.VERIFIED, verify.Result.NEED_TIEBREAKER])
    assert links(runtime) == 1


# Bad input


def test_a_full_ssn_is_refused_and_never_kept(
    client: TestClient, runtime: Runtime, roster: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account_id, token = signed_in_account(runtime)
    for typed in (FULL_SSN, "078-05-1120"):
        response = api(client, token, {"dob": ZEB[2], "ssn4": typed})
        assert response.status_code == 400
        (error,) = response.json()["errors"]
        assert error == {"field": "ssn4", "message": verify.FULL_SSN}
        assert "0512" not in response.text and "1120" not in response.text
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    page = client.get("/verify")
    form = {"csrf_token": factories.csrf(page.text), "ssn4": FULL_SSN}
    form |= {"dob_day": "14", "dob_month": "3", "dob_year": "1961"}
    refused = client.post("/verify", data=form)
    assert refused.status_code == 400
    assert "Enter only the last four digits" in refused.text
    assert FULL_SSN not in refused.text
    assert "1120" not in caplog.text and "0512" not in caplog.text
    with runtime.sessions() as db:
        for record in db.scalars(select(AuditRecord)):
            assert "1120" not in f"{record.target} {record.action}"
    assert links(runtime) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dob": "1990-02-30", "ssn4": "1234"}, "dob"),
        ({"dob": "2999-01-01", "ssn4": "1234"}, "dob"),
        ({"dob": "02/03/1990", "ssn4": "1234"}, "dob"),
        ({"dob": "1990-02-03", "ssn4": "12a4"}, "ssn4"),
        ({"dob": "1990-02-03", "ssn4": "123"}, "ssn4"),
        ({"dob": "1990-02-03", "ssn4": "12345"}, "ssn4"),
    ],
)
def test_malformed_fields_are_refused_by_field(
    client: TestClient, runtime: Runtime, body: dict[str, str], field: str
) -> None:
    _, token = signed_in_account(runtime)
    response = api(client, token, body)
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_a_form_without_csrf_is_refused_and_links_nothing(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    form = {"ssn4": ZEB[3], "dob_day": "14", "dob_month": "3", "dob_year": "1961"}
    assert client.post("/verify", data=form).status_code == 403
    assert links(runtime) == 0


def test_without_the_second_factor_it_sends_you_to_mfa(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=sessions.FIRST_FACTOR)
    page = client.get("/verify", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/mfa/challenge")
    assert api(client, token, person(ZEB)).status_code == 401
    assert links(runtime) == 0


# Guessing resistance


def cycle(client: TestClient, token: str, dob: str, start: int, count: int) -> list[httpx.Response]:
    """Wrong SSN last 4s, with a last name and ZIP so that each is checked (and counted)
    whether or not the DOB is stepped up."""
    return [
        api(client, token, {"dob": dob, "ssn4": f"{n:04d}", "last_name": "Guess", "zip": "00000"})
        for n in range(start, start + count)
    ]


def test_an_account_locks_after_five_failures_until_staff_review(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id, token = signed_in_account(runtime)
    assert {r.status_code for r in cycle(client, token, ZEB[2], 0, 5)} == {422}
    locked = api(client, token, person(ZEB))  # even the right answer now
    assert locked.status_code == 403 and locked.json()["detail"] == verify.LOCKED
    assert link_of(runtime, account_id) is None
    outcomes = [r.outcome for r in audits(runtime) if r.action == "identity.verify"]
    assert outcomes == ["failed"] * 5 + ["denied"]
    assert any(r.action == "identity.verify.lock" for r in audits(runtime))


def test_staff_clear_a_verification_lock_after_review(
    client: TestClient,
    runtime: Runtime,
    roster: None,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from carebridge.cli import main  # noqa: PLC0415

    account_id, token = signed_in_account(runtime)
    cycle(client, token, ZEB[2], 0, 5)
    assert api(client, token, person(ZEB)).status_code == 403
    assert main(["roster", "verify-unlock", account_id, "--reason", "   "]) == 1  # blank
    assert main(["roster", "verify-unlock", account_id, "--reason", "checked by phone"]) == 0
    assert "5 failures forgotten" in capsys.readouterr().out
    # Those five failures stepped ZEB's birth date up: last name and ZIP as well.
    assert api(client, token, person(ZEB)).json()["needs"] == ["last_name", "zip"]
    assert api(client, token, person(ZEB, last_name=ZEB[1], zip=ZEB[4])).status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)
    assert any(r.action == "identity.verify.unlock" for r in audits(runtime))


def test_a_strangers_failures_from_the_patients_address_do_not_stop_them_verifying(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    # 25 failures from one address (the test client's), a fresh account every four and a
    # new birthday each time: enough to have locked the address before.
    statuses = []
    for n in range(25):
        if n % 4 == 0:
            _, token = signed_in_account(runtime)
        body = {"dob": f"1950-01-{n + 1:02d}", "ssn4": "0000"}
        statuses.append(api(client, token, body).status_code)
    assert set(statuses) == {422}
    # The patient, at the same address: asked for more, never refused.
    account_id, token = signed_in_account(runtime)
    asked = api(client, token, person(ZEB))
    assert asked.status_code == 422 and asked.json()["needs"] == ["last_name", "zip"]
    assert api(client, token, person(ZEB, last_name=ZEB[1], zip=ZEB[4])).status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


def test_ten_failures_against_a_record_do_not_lock_its_patient_out(
    client: TestClient, runtime: Runtime, roster: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="identity.flows.verify")
    # Ten accounts that know Ada's DOB and SSN last 4 but not her last name and ZIP.
    for _ in range(10):
        _, token = signed_in_account(runtime)
        body = person(TWIN_A, last_name="Wrong", zip="00000")
        assert api(client, token, body).status_code == 422
    # Ada herself, from a fresh account: asked for her ZIP as well, then verified.
    account_id, token = signed_in_account(runtime)
    asked = api(client, token, person(TWIN_A, last_name="Marchbank"))
    assert asked.status_code != 403, asked.json()  # the old record lock: "contact support"
    assert asked.status_code == 422 and asked.json()["needs"] == ["last_name", "zip"]
    done = api(client, token, person(TWIN_A, last_name="Marchbank", zip=TWIN_A[4]))
    assert done.status_code == 200
    assert link_of(runtime, account_id) == patient_of(runtime, TWIN_A)
    # An alert, never a lock: row IDs in the log, no value.
    alerts = [r for r in caplog.records if r.getMessage() == "roster record targeted"]
    assert len(alerts) == 1
    assert "Marchbank" not in caplog.text and "0193" not in caplog.text


def test_cycling_ssn_digits_for_one_birthday_steps_it_up_across_accounts(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    answers = []
    for n in range(5):
        _, token = signed_in_account(runtime)
        answers += [
            api(client, token, {"dob": ZEB[2], "ssn4": f"{k:04d}"}) for k in range(n * 3, n * 3 + 3)
        ]
    needs = [r.json()["needs"] for r in answers]
    allowed = runtime.settings.verify_step_up_after  # 3: checked, the tie-breaker answer
    assert allowed == 3 and needs[:allowed] == [["last_name"]] * allowed
    assert needs[allowed:] == [["last_name", "zip"]] * (len(needs) - allowed)
    # The right SSN last 4 now links only with last name and ZIP as well.
    account_id, token = signed_in_account(runtime)
    assert api(client, token, person(ZEB)).json()["needs"] == ["last_name", "zip"]
    assert api(client, token, person(ZEB, last_name=ZEB[1])).status_code == 422
    assert link_of(runtime, account_id) is None
    assert links(runtime) == 0


def test_the_redis_store_locks_an_account_too(tmp_path: Path, database_url: str) -> None:
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        require("Redis", False, f"127.0.0.1:6379: {exc}")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=url)
    runtime = Runtime.build(settings)
    try:
        load_roster(runtime, tmp_path)
        account_id, token = signed_in_account(runtime)
        with TestClient(create_app(runtime), raise_server_exceptions=False) as one:
            cycle(one, token, "1951-05-05", 0, 3)
        with TestClient(create_app(runtime), raise_server_exceptions=False) as two:
            cycle(two, token, "1951-05-06", 3, 2)
            assert api(two, token, person(ZEB)).status_code == 403
        assert link_of(runtime, account_id) is None
    finally:
        runtime.close()
