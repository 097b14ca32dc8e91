"""Issue 17, finding 2: an activation code's date of birth guessed from many accounts. Each
code counts its own failures, whichever accounts and addresses they come from, and is
voided at CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES (5): it then answers like any wrong code,
staff see it voided (CLI and admin API) and issue a new one (both backends)."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.flows import activate
from identity.models import ActivationCode, RosterMember
from identity.roster import staff

from . import factories
from .roster_helpers import PEOPLE, audit_records, import_roster, links
from .test_activation import run
from .test_admin_api import PREFIX, ops

ZEB_DOB = date(1961, 3, 14)


@pytest.fixture
def patients(runtime: Runtime, tmp_path: Path) -> dict[str, str]:
    return import_roster(runtime, tmp_path)


def issue(runtime: Runtime, patient_id: str) -> str:
    return staff.issue_code(runtime, patient_id, reason="patient asked at the front desk").code


def attempt(runtime: Runtime, code: str, dob: date, host: str) -> activate.Status:
    """One redemption from a fresh account: what an attacker with many accounts does."""
    account_id = factories.account(runtime)
    return activate.redeem(runtime, account_id, code, dob, client_host=host, request_id=None).status


def code_row(runtime: Runtime) -> ActivationCode:
    with runtime.sessions() as db:
        row = db.scalars(select(ActivationCode).order_by(ActivationCode.created_at)).first()
    assert row is not None
    return row


def voided_total() -> float:
    return REGISTRY.get_sample_value("carebridge_activation_codes_voided_total") or 0.0


def test_activation_code_voided_after_five_wrong_birth_dates_from_many_accounts(
    runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["zeb"])
    before = voided_total()
    # Five accounts from five addresses, one wrong date each: no account or address limit
    # is anywhere near its own.
    for n in range(5):
        wrong = ZEB_DOB + timedelta(days=n + 1)
        assert attempt(runtime, code, wrong, f"198.51.100.{n + 1}") is activate.Status.FAILED
    # The sixth account has the right date of birth: too late, the code is void.
    assert attempt(runtime, code, ZEB_DOB, "203.0.113.9") is activate.Status.FAILED
    assert links(runtime) == {}
    row = code_row(runtime)
    assert row.failures == 5 and row.voided_at is not None and row.used_at is None
    assert voided_total() - before == 1
    # Audited: each failure names the code (by ID), the voiding names the patient; no value.
    records = [r for r in audit_records(runtime) if r.action.startswith("identity.activate")]
    failed = [r for r in records if r.action == "identity.activate" and r.outcome == "failed"]
    assert len(failed) == 6
    assert all(r.target and r.target.endswith(f"activation-code:{row.id}") for r in failed[:5])
    (void,) = [r for r in records if r.action == "identity.activate.void"]
    assert (void.outcome, void.target) == ("denied", f"{patients['zeb']} activation-code:{row.id}")
    text = "\n".join(repr((r.actor, r.action, r.target)) for r in audit_records(runtime))
    for value in (code, code.replace("-", ""), "1961", *PEOPLE["zeb"][:2]):
        assert value not in text
    # Staff issue a new code; the patient redeems it.
    fresh = issue(runtime, patients["zeb"])
    assert attempt(runtime, fresh, ZEB_DOB, "203.0.113.9") is activate.Status.LINKED


def test_concurrent_wrong_birth_dates_void_a_code_exactly_once(
    runtime: Runtime, patients: dict[str, str]
) -> None:
    code = issue(runtime, patients["pip"])
    before = voided_total()
    accounts = [factories.account(runtime) for _ in range(8)]
    barrier = threading.Barrier(len(accounts))
    results: list[activate.Result] = []

    def guess(number: int, account_id: str) -> None:
        barrier.wait()
        results.append(
            activate.redeem(
                runtime,
                account_id,
                code,
                date(1990, 12, 2 + number),
                client_host=f"198.51.100.{number + 1}",
                request_id=None,
            )
        )

    threads = [threading.Thread(target=guess, args=pair) for pair in enumerate(accounts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status for r in results} == {activate.Status.FAILED}
    assert [r.voided for r in results].count(True) == 1
    row = code_row(runtime)
    assert row.failures == 5 and row.voided_at is not None
    assert voided_total() - before == 1
    voids = [r for r in audit_records(runtime) if r.action == "identity.activate.void"]
    assert len(voids) == 1
    assert attempt(runtime, code, date(1990, 12, 1), "203.0.113.9") is activate.Status.FAILED


def test_staff_see_a_voided_code_in_lookup_and_the_admin_api(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    client: TestClient,
    runtime: Runtime,
    patients: dict[str, str],
) -> None:
    voided = issue(runtime, patients["zeb"])
    for n in range(5):
        attempt(runtime, voided, ZEB_DOB + timedelta(days=n + 1), f"198.51.100.{n + 1}")
    issue(runtime, patients["zeb"])
    status, out, err = run(capsys, "roster", "lookup", patients["zeb"], "--reason", "code fails")
    assert (status, err) == (0, "")
    lines = [line for line in out.splitlines() if line.startswith("activation code ")]
    assert len(lines) == 2
    assert "usable until" in lines[0] and "0 wrong dates of birth" in lines[0]
    assert "VOIDED" in lines[1] and "after 5 wrong dates of birth" in lines[1]
    assert voided not in out and "1961" not in out

    url = f"{PREFIX}/patients/{patients['zeb']}/activation-codes"
    response = client.get(url, headers=ops(runtime))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["patient_id"] == patients["zeb"]
    assert [(c["state"], c["failures"]) for c in body["codes"]] == [("usable", 0), ("voided", 5)]
    assert body["codes"][1]["voided_at"] is not None
    assert voided not in response.text and voided.replace("-", "") not in response.text
    listed = [r for r in audit_records(runtime) if r.action == "roster.activation_code.list"]
    assert [(r.actor, r.target) for r in listed] == [("client:ops", patients["zeb"])]
    unknown = client.get(f"{PREFIX}/patients/pt_nobody/activation-codes", headers=ops(runtime))
    assert unknown.status_code == 404


def test_the_failures_that_void_a_code_are_a_setting(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES", "2")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    assert settings.activation_code_max_failures == 2
    runtime = Runtime.build(settings)
    try:
        patients = import_roster(runtime, tmp_path)
        code = issue(runtime, patients["otto"])
        for n in range(2):
            attempt(runtime, code, date(1975, 7, 5 + n), f"198.51.100.{n + 1}")
        assert attempt(runtime, code, date(1975, 7, 4), "203.0.113.9") is activate.Status.FAILED
        assert code_row(runtime).voided_at is not None
    finally:
        runtime.close()


def test_only_wrong_birth_dates_count_against_a_code(
    runtime: Runtime, patients: dict[str, str]
) -> None:
    # The right date of birth for a code that cannot link now (its patient ineligible for
    # a while) fails like any other attempt but is no guess: the code keeps its chances.
    code = issue(runtime, patients["zeb"])
    with transaction(runtime.sessions) as db:
        db.execute(update(RosterMember).values(eligible=False))
    for n in range(6):
        assert attempt(runtime, code, ZEB_DOB, f"198.51.100.{n + 1}") is activate.Status.FAILED
    assert code_row(runtime).failures == 0
    with transaction(runtime.sessions) as db:
        db.execute(update(RosterMember).values(eligible=True))
    assert attempt(runtime, code, ZEB_DOB, "203.0.113.9") is activate.Status.LINKED
