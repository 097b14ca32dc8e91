"""Activation codes: issued once and stored hashed, redeemed once with the DOB, every
failure answered alike, throttled per account (both backends)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.cli import main
from carebridge.db import transaction
from carebridge.models import metadata
from carebridge.runtime import Runtime
from identity.flows import activate
from identity.models import ActivationCode, RosterMember
from identity.roster import staff

from . import factories
from .roster_helpers import PEOPLE, audit_records, import_roster, link, links, signed_in_account

CODE = re.compile(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}")
ZEB_DOB = "1961-03-14"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def patients(runtime: Runtime, tmp_path: Path) -> dict[str, str]:
    return import_roster(runtime, tmp_path)


def issue(runtime: Runtime, patient_id: str) -> str:
    return staff.issue_code(runtime, patient_id, reason="patient asked at the front desk").code


def redeem(client: TestClient, headers: dict[str, str], code: str, dob: str) -> Any:
    return client.post("/api/v1/activate", json={"code": code, "dob": dob}, headers=headers)


def test_a_code_is_printed_once_and_the_database_holds_only_its_hash(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, patients: dict[str, str]
) -> None:
    patient = patients["zeb"]
    status, out, err = run(
        capsys, "roster", "activation-code", patient, "--reason", "front desk request"
    )
    assert (status, err) == (0, "")
    match = CODE.search(out)
    assert match is not None
    code = match.group(0)
    assert "expires" in out
    assert all(ch in staff.ALPHABET for ch in code.replace("-", ""))
    dumped = []
    with runtime.sessions() as db:
        for table in metadata.sorted_tables:
            dumped += [repr(tuple(row)) for row in db.execute(select(table)).all()]
    everything = "\n".join(dumped)
    assert code not in everything
    assert code.replace("-", "") not in everything
    with runtime.sessions() as db:
        row = db.scalars(select(ActivationCode)).one()
    assert row.code_hash == runtime.keyring.lookup_hash("activation-code", code.replace("-", ""))
    assert row.reason == "front desk request"
    assert row.created_by == "operator"
    expires = (
        row.expires_at.replace(tzinfo=UTC) if row.expires_at.tzinfo is None else row.expires_at
    )
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    records = [r for r in audit_records(runtime) if r.action == "roster.activation_code.issue"]
    assert [(r.actor, r.target, r.outcome) for r in records] == [("operator", patient, "allowed")]


def test_issuing_for_an_unknown_or_ineligible_patient_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, patients: dict[str, str]
) -> None:
    status, out, err = run(
        capsys, "roster", "activation-code", "pt_nosuchpatient0000000", "--reason", "x"
    )
    assert status != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    with transaction(runtime.sessions) as db:
        db.execute(
            update(RosterMember)
            .where(RosterMember.patient_id == patients["pip"])
            .values(eligible=False)
        )
    status, out, err = run(capsys, "roster", "activation-code", patients["pip"], "--reason", "x")
    assert status != 0
    assert "not eligible" in err
    with runtime.sessions() as db:
        assert db.scalars(select(ActivationCode)).all() == []


def test_the_code_with_the_right_dob_links_the_account_once(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["zeb"])
    account_id, headers = signed_in_account(runtime)
    # Case, spaces and lookalike letters don't matter; MM/DD/YYYY is the same date.
    typed = code.lower().replace("-", " ").replace("1", "l").replace("0", "o")
    response = redeem(client, headers, typed, "03/14/1961")
    assert response.status_code == 200, response.text
    assert response.json() == {"patient_id": patients["zeb"]}
    assert links(runtime) == {patients["zeb"]: account_id}
    with runtime.sessions() as db:
        assert db.scalars(select(ActivationCode)).one().used_at is not None
    allowed = [r for r in audit_records(runtime) if r.action == "identity.activate"]
    assert [(r.actor, r.target, r.outcome) for r in allowed] == [
        (f"account:{account_id}", patients["zeb"], "allowed")
    ]
    # Linked now: another attempt is a conflict, not a guess.
    assert redeem(client, headers, code, ZEB_DOB).status_code == 409


def test_the_page_redeems_a_code_and_shows_the_link(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["otto"])
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/activate")
    assert page.status_code == 200
    assert 'autocomplete="bday"' in page.text
    form = {"csrf_token": factories.csrf(page.text), "code": code, "dob": "1975-07-04"}
    wrong = client.post("/activate", data={**form, "dob": "1975-07-05"}, follow_redirects=False)
    assert wrong.status_code == 400
    assert activate.FAILED in wrong.text.replace("&#39;", "'")
    done = client.post("/activate", data=form, follow_redirects=False)
    assert done.status_code == 303
    assert "Your patient record is linked" in client.get("/activate").text
    assert links(runtime) == {patients["otto"]: account_id}


def _wrong_dob(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    return issue(runtime, patients["zeb"]), "1961-03-15"


def _unknown(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    return staff.new_code(), ZEB_DOB


def _expired(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    code = issue(runtime, patients["zeb"])
    with transaction(runtime.sessions) as db:
        db.execute(update(ActivationCode).values(expires_at=datetime.now(UTC) - timedelta(1)))
    return code, ZEB_DOB


def _used(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    code = issue(runtime, patients["zeb"])
    with transaction(runtime.sessions) as db:
        db.execute(update(ActivationCode).values(used_at=datetime.now(UTC)))
    return code, ZEB_DOB


def _reissued(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    old = issue(runtime, patients["zeb"])
    issue(runtime, patients["zeb"])
    return old, ZEB_DOB


def _ineligible(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    code = issue(runtime, patients["zeb"])
    with transaction(runtime.sessions) as db:
        db.execute(update(RosterMember).values(eligible=False))
    return code, ZEB_DOB


def _claimed(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    code = issue(runtime, patients["zeb"])
    link(runtime, factories.account(runtime), patients["zeb"])
    return code, ZEB_DOB


def _voided(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    code = issue(runtime, patients["otto"])  # Zeb may be linked by an earlier case
    for n in range(runtime.settings.activation_code_max_failures):
        activate.redeem(
            runtime,
            factories.account(runtime),
            code,
            date(1975, 7, 5 + n),
            client_host=f"198.51.100.{n + 1}",
            request_id=None,
        )
    return code, "1975-07-04"  # the right date of birth, too late


FAILURES: dict[str, Callable[[Runtime, dict[str, str]], tuple[str, str]]] = {
    "wrong dob": _wrong_dob,
    "unknown code": _unknown,
    "expired": _expired,
    "used": _used,
    "reissued old code": _reissued,
    "ineligible patient": _ineligible,
    "patient already linked": _claimed,
    "voided after wrong dates of birth": _voided,
}


def _answer(response: Any) -> tuple[int, dict[str, Any]]:
    body = {k: v for k, v in response.json().items() if k not in ("request_id", "instance")}
    return response.status_code, body


def test_every_failure_gets_the_same_answer(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    answers = {}
    for name, arrange in FAILURES.items():
        with transaction(runtime.sessions) as db:
            db.execute(update(RosterMember).values(eligible=True))
        code, dob = arrange(runtime, patients)
        account_id, headers = signed_in_account(runtime)
        answers[name] = _answer(redeem(client, headers, code, dob))
        assert account_id not in links(runtime).values(), name
    first = answers["unknown code"]
    assert first[0] == 400
    assert first[1]["detail"] == activate.FAILED
    assert {name: answer for name, answer in answers.items() if answer != first} == {}


def test_two_people_redeeming_one_code_at_once_make_exactly_one_link(
    runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["pip"])
    accounts = [factories.account(runtime) for _ in range(4)]
    barrier = threading.Barrier(len(accounts))
    results: list[activate.Status] = []

    def attempt(account_id: str) -> None:
        barrier.wait()
        result = activate.redeem(
            runtime, account_id, code, date(1990, 12, 1), client_host="192.0.2.7", request_id=None
        )
        results.append(result.status)

    threads = [threading.Thread(target=attempt, args=(a,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted([activate.Status.LINKED] + [activate.Status.FAILED] * 3)
    assert list(links(runtime)) == [patients["pip"]]


def test_five_failures_lock_activation_until_staff_unlock_it(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    client: TestClient,
    runtime: Runtime,
    patients: dict[str, str],
) -> None:
    code = issue(runtime, patients["zeb"])
    account_id, headers = signed_in_account(runtime)
    for day in range(1, 6):
        assert redeem(client, headers, code, f"1961-03-{day:02d}").status_code == 400
    locked = redeem(client, headers, code, ZEB_DOB)
    assert locked.status_code == 429
    assert links(runtime) == {}
    actions = [(r.action, r.outcome) for r in audit_records(runtime) if r.actor != "operator"]
    assert actions.count(("identity.activate", "failed")) == 5
    assert ("identity.activate.lock", "denied") in actions
    assert actions[-1] == ("identity.activate", "denied")
    status, out, _ = run(
        capsys, "roster", "activation-unlock", account_id, "--reason", "identity checked by phone"
    )
    assert status == 0
    assert "5 failures forgotten" in out
    # Those five wrong dates of birth also voided the code (its own limit): it answers like
    # any wrong code, and staff issue a new one.
    assert _answer(redeem(client, headers, code, ZEB_DOB)) == _answer(
        redeem(client, headers, staff.new_code(), ZEB_DOB)
    )
    assert redeem(client, headers, issue(runtime, patients["zeb"]), ZEB_DOB).status_code == 200
    assert links(runtime) == {patients["zeb"]: account_id}


def test_attempts_leave_no_code_or_dob_in_the_audit_log(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["zeb"])
    _, headers = signed_in_account(runtime)
    redeem(client, headers, code, "1961-03-15")
    redeem(client, headers, code, ZEB_DOB)
    text = "\n".join(repr((r.actor, r.action, r.target)) for r in audit_records(runtime))
    for value in (code, code.replace("-", ""), "1961", "4821", *PEOPLE["zeb"][:2]):
        assert value not in text


def test_a_session_short_of_its_second_step_cannot_redeem(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["zeb"])
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=1)
    response = redeem(client, {"Authorization": f"Bearer {token}"}, code, ZEB_DOB)
    assert response.status_code == 401
    assert links(runtime) == {}
