"""``carebridge roster import``: validation without values, all or nothing, re-imports,
opaque patient IDs, no plaintext at rest, one audit record per import (both backends)."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.keyring import Keyring, associated_data
from carebridge.runtime import Runtime
from identity.models import PatientLink, RosterImport, RosterMember
from identity.roster import importer
from identity.roster.hashes import RosterHashes

from . import factories

HEADER = "first_name,last_name,dob,ssn4,zip,group,member_id,status"
# Clearly fake people with values distinctive enough to search for.
ZEB = ["Zebediah", "Quillfeather", "1961-03-14", "4821", "02139", "Acme Widgets", "QX-700001", ""]
OTTO = ["Ottoline", "Brambleworth", "07/04/1975", "0193", "94110-1234", "Acme", "QX-700002", ""]
PIP = ["Pipkin", "Thistledown", "1990-12-01", "7350", "60614", "", "QX-700003", ""]
PEOPLE = [ZEB, OTTO, PIP]
PATIENT_ID = re.compile(r"pt_[A-Za-z0-9_-]{22,}")


def csv_text(*rows: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *(",".join(row) for row in rows)]) + "\n"


def write(tmp_path: Path, content: str | bytes, name: str = "roster.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def roster_import(
    capsys: pytest.CaptureFixture[str], path: Path, *options: str, source: str = "acme"
) -> tuple[int, str, str]:
    return run(capsys, "roster", "import", str(path), "--source", source, *options)


def members(runtime: Runtime, source: str = "acme") -> list[RosterMember]:
    with runtime.sessions() as db:
        return list(db.scalars(select(RosterMember).where(RosterMember.source == source)).all())


def details(keyring: Keyring, member: RosterMember) -> dict[str, str]:
    plain = keyring.decrypt(member.details_encrypted, associated_data("roster-member", member.id))
    result: dict[str, str] = json.loads(plain)
    return result


def by_member_id(runtime: Runtime, source: str = "acme") -> dict[str, RosterMember]:
    return {details(runtime.keyring, m)["member_id"]: m for m in members(runtime, source)}


def audit_records(runtime: Runtime) -> list[AuditRecord]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all())


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_absent(value: str, *texts: str) -> None:
    for text in texts:
        assert value not in text


# A valid import


def test_valid_import_stores_every_member_eligible_with_hashes_and_encrypted_details(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    status, out, err = roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    assert (status, err) == (0, "")
    assert "3 rows, 3 new, 0 updated, 0 rejected, 0 made ineligible" in out
    found = by_member_id(runtime)
    assert set(found) == {"QX-700001", "QX-700002", "QX-700003"}
    hashes = RosterHashes(runtime.keyring)
    otto = found["QX-700002"]
    assert otto.eligible
    assert otto.terminated_at is None
    # MM/DD/YYYY and YYYY-MM-DD are the same date to the hash.
    assert otto.identity_hash == hashes.identity(date(1975, 7, 4), "0193")
    assert otto.dob_hash == hashes.dob(date(1975, 7, 4))
    assert otto.last_name_hash == hashes.last_name("BRAMBLE-worth")
    assert otto.zip_hash == hashes.zip("94110")
    assert details(runtime.keyring, otto) == {
        "first_name": "Ottoline",
        "last_name": "Brambleworth",
        "zip": "94110-1234",
        "group": "Acme",
        "member_id": "QX-700002",
    }


def test_details_moved_to_another_member_row_do_not_open(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    first, second, *_ = members(runtime)
    with pytest.raises(Exception, match="does not open"):
        runtime.keyring.decrypt(
            first.details_encrypted, associated_data("roster-member", second.id)
        )


def test_patient_ids_are_random_prefixed_128_bit_and_stable_across_reimports(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    path = write(tmp_path, csv_text(*PEOPLE))
    roster_import(capsys, path)
    before = {key: m.patient_id for key, m in by_member_id(runtime).items()}
    for patient_id in before.values():
        assert PATIENT_ID.fullmatch(patient_id)
        token = patient_id.removeprefix("pt_")
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 16
    assert len(set(before.values())) == 3

    status, out, _ = roster_import(capsys, path)
    assert status == 0
    assert "3 rows, 0 new, 3 updated" in out
    after = {key: m.patient_id for key, m in by_member_id(runtime).items()}
    assert after == before


def test_the_same_people_in_two_sources_get_unrelated_patient_ids(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    path = write(tmp_path, csv_text(*PEOPLE))
    assert roster_import(capsys, path, source="acme")[0] == 0
    assert roster_import(capsys, path, source="globex")[0] == 0
    acme = {m.patient_id for m in members(runtime, "acme")}
    globex = {m.patient_id for m in members(runtime, "globex")}
    assert len(acme) == len(globex) == 3
    assert not acme & globex
    # Nothing of the person is in the ID: the same member ID gives another patient ID.
    for patient_id in acme | globex:
        for value in ("QX-70000", "1961", "4821", "Zebediah"):
            assert value.lower() not in patient_id.lower()


def test_other_header_names_map_with_columns(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    header = "First,Last,DateOfBirth,SSN_Last4,Zip,Employer,MemberNumber"
    path = write(tmp_path, "\ufeff" + csv_text(ZEB[:7], header=header))
    status, _, err = roster_import(
        capsys,
        path,
        "--columns",
        "first_name=First,last_name=Last,dob=DateOfBirth,ssn4=SSN_Last4,group=Employer,"
        "member_id=MemberNumber",
    )
    assert (status, err) == (0, "")
    assert set(by_member_id(runtime)) == {"QX-700001"}


# Invalid rows: the line and the field, never the value, and nothing imported


def _future() -> str:
    return (datetime.now(UTC).date() + timedelta(days=2)).isoformat()


@pytest.mark.parametrize(
    "case",
    [
        ("dob", "02/30/1990", "dob: not a real date"),
        ("dob", "1990-02-30", "dob: not a real date"),
        ("dob", "FUTURE", "dob: is in the future"),
        ("dob", "1899-12-31", "dob: is before 1900"),
        ("dob", "14.03.1961", "dob: not a date"),
        ("ssn4", "482", "ssn4: must be exactly 4 digits"),
        ("ssn4", "483726195", "ssn4: only the last four digits are needed"),
        ("ssn4", "483-72-6195", "ssn4: only the last four digits are needed"),
        ("ssn4", "48a1", "ssn4: must be exactly 4 digits"),
        ("zip", "0213X", "zip: must be 5 digits or ZIP+4"),
        ("zip", "2139", "zip: must be 5 digits or ZIP+4"),
        ("first_name", "Zebediah" * 13, "first_name: longer than 100 characters"),
        ("last_name", "", "last_name: is required"),
        ("member_id", "QX-" + "7" * 62, "member_id: longer than 64 characters"),
        ("status", "retired-early", "status: must be active or terminated"),
    ],
)
@pytest.mark.usefixtures("cli_env")
def test_an_invalid_row_is_reported_by_line_and_field_without_its_value_and_nothing_is_imported(
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
    runtime: Runtime,
    tmp_path: Path,
    case: tuple[str, str, str],
) -> None:
    field, value, reason = case
    value = _future() if value == "FUTURE" else value
    bad = list(OTTO)
    bad[HEADER.split(",").index(field)] = value
    path = write(tmp_path, csv_text(ZEB, bad, PIP))
    status, out, err = roster_import(capsys, path)
    assert status == 1
    assert any(line.startswith(f"line 3: {reason}") for line in err.splitlines()), err
    assert "1 invalid row; nothing was imported" in err
    if value:
        assert_absent(value, out, err, logs.text)
    # The rest of the row is not quoted either.
    assert_absent("Ottoline", out, err, logs.text)
    assert members(runtime) == []


def test_every_bad_row_is_listed_in_line_order(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    bad_dob = [*ZEB[:2], "02/30/1990", *ZEB[3:]]
    bad_ssn = [*PIP[:3], "483-72-6195", *PIP[4:]]
    status, _, err = roster_import(capsys, write(tmp_path, csv_text(bad_dob, OTTO, bad_ssn)))
    assert status == 1
    lines = err.splitlines()
    assert lines[0] == "line 2: dob: not a real date"
    assert lines[1].startswith("line 4: ssn4: only the last four digits are needed")
    assert "2 invalid rows" in lines[2]
    assert_absent("483-72-6195", err)
    assert members(runtime) == []


def test_a_duplicate_member_id_refuses_the_import(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    twin = [*PIP[:6], ZEB[6], ""]
    status, _, err = roster_import(capsys, write(tmp_path, csv_text(ZEB, OTTO, twin)))
    assert status == 1
    assert "line 4: member_id: appears more than once in the file" in err
    assert_absent("QX-700001", err)
    assert members(runtime) == []


def test_a_duplicate_member_id_in_a_later_batch_is_found_too(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_env: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(importer, "BATCH", 1)
    twin = [*PIP[:6], ZEB[6], ""]
    status, _, err = roster_import(capsys, write(tmp_path, csv_text(ZEB, OTTO, PIP, twin)))
    assert status == 1
    assert "line 5: member_id: appears more than once in the file" in err
    assert members(runtime) == []


def test_a_missing_column_is_one_error_before_any_row(
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
    cli_env: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    header = "first_name,last_name,dob,zip,group,member_id"
    rows = [[*ZEB[:3], *ZEB[4:7]], ["Pipkin", "Thistledown", "02/30/1990", "60614", "", "M"]]
    status, out, err = roster_import(capsys, write(tmp_path, csv_text(*rows, header=header)))
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "missing column(s): ssn4" in err
    assert "line 3" not in err
    assert members(runtime) == []


def test_a_file_without_a_header_line_is_not_quoted_back(
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
    cli_env: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "\n".join(",".join(row) for row in PEOPLE) + "\n")
    status, out, err = roster_import(capsys, path)
    assert status == 1
    assert "missing column(s)" in err
    for value in ZEB[:7]:
        assert_absent(value, out, err, logs.text)


def test_a_file_in_another_encoding_is_one_error_naming_file_and_line(
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
    cli_env: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    rows = [ZEB, ["Jörgina", "Müllerstraße", "1980-01-01", "5555", "10001", "", "QX-9", ""]]
    path = write(tmp_path, csv_text(*rows).encode("latin-1"), name="latin1.csv")
    status, out, err = roster_import(capsys, path)
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert f"{path}: line 3: not UTF-8 text" in err
    for value in ("Jörgina", "Müllerstraße", "J\\xf6rgina", "xf6", "xfc"):
        assert_absent(value, out, err, logs.text)
    assert members(runtime) == []


# --skip-invalid, re-imports, terminations, --partial


def test_skip_invalid_imports_the_good_rows_and_lists_the_others(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    bad = [*OTTO[:3], "483726195", *OTTO[4:]]
    path = write(tmp_path, csv_text(ZEB, bad, PIP))
    status, out, err = roster_import(capsys, path, "--skip-invalid")
    assert status == 0
    assert err.startswith("line 3: ssn4: only the last four digits are needed")
    assert "3 rows, 2 new, 0 updated, 1 rejected" in out
    assert_absent("483726195", out, err)
    assert set(by_member_id(runtime)) == {"QX-700001", "QX-700003"}


def test_a_known_members_broken_row_leaves_it_as_it_was(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    before = by_member_id(runtime)["QX-700002"]
    bad = [*OTTO[:2], "02/30/1975", *OTTO[3:]]
    status, out, _ = roster_import(
        capsys, write(tmp_path, csv_text(ZEB, bad, PIP)), "--skip-invalid"
    )
    assert status == 0
    assert "0 made ineligible" in out
    after = by_member_id(runtime)["QX-700002"]
    assert after.eligible
    assert after.identity_hash == before.identity_hash


def test_a_full_reimport_updates_members_and_retires_the_missing_ones(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    before = by_member_id(runtime)
    moved = [*ZEB[:4], "10001", *ZEB[5:]]
    status, out, _ = roster_import(capsys, write(tmp_path, csv_text(moved, OTTO)))
    assert status == 0
    assert "2 rows, 0 new, 2 updated, 0 rejected, 1 made ineligible" in out
    after = by_member_id(runtime)
    assert details(runtime.keyring, after["QX-700001"])["zip"] == "10001"
    assert after["QX-700001"].zip_hash == RosterHashes(runtime.keyring).zip("10001")
    assert after["QX-700001"].eligible
    assert not after["QX-700003"].eligible
    assert after["QX-700003"].patient_id == before["QX-700003"].patient_id
    # Back on the next roster, eligible again with the same patient ID.
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    again = by_member_id(runtime)["QX-700003"]
    assert again.eligible
    assert again.patient_id == before["QX-700003"].patient_id


def test_terminated_rows_are_ineligible_until_listed_active_again(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    gone = [*PIP[:7], "Terminated"]
    status, out, _ = roster_import(capsys, write(tmp_path, csv_text(ZEB, OTTO, gone)))
    assert status == 0
    assert "1 made ineligible" in out
    pip = by_member_id(runtime)["QX-700003"]
    assert not pip.eligible
    assert pip.terminated_at is not None
    # A first import of a terminated member: on the roster, never eligible.
    roster_import(capsys, write(tmp_path, csv_text(gone)), source="globex")
    (new,) = members(runtime, "globex")
    assert not new.eligible
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    assert by_member_id(runtime)["QX-700003"].eligible
    assert by_member_id(runtime)["QX-700003"].terminated_at is None


def test_a_partial_import_leaves_the_other_members_alone(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(ZEB, OTTO)))
    status, out, _ = roster_import(capsys, write(tmp_path, csv_text(PIP)), "--partial")
    assert status == 0
    assert "(acme, partial): 1 rows, 1 new, 0 updated, 0 rejected, 0 made ineligible" in out
    found = by_member_id(runtime)
    assert set(found) == {"QX-700001", "QX-700002", "QX-700003"}
    assert all(m.eligible for m in found.values())


def test_a_full_import_without_one_valid_row_is_refused(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    status, _, err = roster_import(capsys, write(tmp_path, csv_text()), "--skip-invalid")
    assert status == 1
    assert "no valid rows; nothing was imported" in err
    assert all(m.eligible for m in members(runtime))


# At rest, in the audit log, in the link table


def _is_hash_or_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{64}|(rm|pt|ri)_[A-Za-z0-9_-]{22}", value))


def test_the_database_holds_none_of_the_plaintext_values(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    roster_import(capsys, write(tmp_path, csv_text(ZEB, OTTO)), "--partial")
    account = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        patient = db.scalars(select(RosterMember.patient_id).limit(1)).one()
        db.add(PatientLink(account_id=account, patient_id=patient, linked_at=datetime.now(UTC)))
    long_values = {value for person in PEOPLE for value in person[:7] if len(value) > 5} | {
        "1975-07-04",
        "1961-03-14",
        "12/01/1990",
        "03/14/1961",
    }
    short_values = {value for person in PEOPLE for value in (person[3], person[4][:5])}
    scanned = 0
    with runtime.sessions() as db:
        for model in (RosterMember, RosterImport, PatientLink, AuditRecord):
            for row in db.execute(select(model.__table__)).all():
                for cell in row:
                    if isinstance(cell, bytes):
                        for value in long_values | short_values:
                            assert value.encode() not in cell
                    elif isinstance(cell, str):
                        scanned += 1
                        for value in long_values:
                            assert value.lower() not in cell.lower()
                        if not _is_hash_or_id(cell):
                            for value in short_values:
                                assert value not in cell
    assert scanned > 30


def test_each_import_leaves_one_audit_record_without_values(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    bad = [*OTTO[:3], "483-72-6195", *OTTO[4:]]
    roster_import(capsys, write(tmp_path, csv_text(ZEB, bad)))
    records = audit_records(runtime)
    assert [(r.actor, r.action, r.target, r.outcome) for r in records] == [
        ("operator", "roster.import", "roster-source:acme", "allowed"),
        ("operator", "roster.import", "roster-source:acme", "denied"),
    ]
    with runtime.sessions() as db:
        imports = db.scalars(select(RosterImport).order_by(RosterImport.started_at)).all()
    assert [(i.outcome, i.rows, i.imported, i.rejected) for i in imports] == [
        ("imported", 3, 3, 0),
        ("refused", 2, 0, 1),
    ]


def test_an_account_links_to_one_patient_and_a_patient_to_one_account(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, tmp_path: Path
) -> None:
    roster_import(capsys, write(tmp_path, csv_text(*PEOPLE)))
    first, second = (m.patient_id for m in members(runtime)[:2])
    one, two = factories.account(runtime), factories.account(runtime)
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(PatientLink(account_id=one, patient_id=first, linked_at=now))
    with pytest.raises(IntegrityError), transaction(runtime.sessions) as db:
        db.add(PatientLink(account_id=two, patient_id=first, linked_at=now))
    with pytest.raises(IntegrityError), transaction(runtime.sessions) as db:
        db.add(PatientLink(account_id=one, patient_id=second, linked_at=now))
    with pytest.raises(IntegrityError), transaction(runtime.sessions) as db:
        db.add(PatientLink(account_id=two, patient_id="pt_no-such-patient", linked_at=now))
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(PatientLink)) == 1
    status, out, _ = run(capsys, "roster", "stats", "--source", "acme")
    assert status == 0
    assert "3 members, 3 eligible, 0 ineligible (0 terminated), 1 linked to accounts" in out


# The command line around it


def test_stats_of_an_unknown_source_is_one_line_error(
    capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    status, out, err = run(capsys, "roster", "stats", "--source", "nobody")
    assert status == 1
    assert out == ""
    assert err == "carebridge: error: no roster has been imported for source 'nobody'\n"


@pytest.mark.parametrize("source", ["", "a b", "x" * 65, "../etc", "-dash"])
def test_a_bad_source_name_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str], cli_env: Path, tmp_path: Path, source: str
) -> None:
    status, _, err = run(
        capsys, "roster", "import", str(tmp_path / "none.csv"), f"--source={source}"
    )
    assert status == 1
    assert len(err.splitlines()) == 1
    assert "--source: a source name is 1 to 64 letters" in err


def test_an_unreadable_file_is_one_line_error(
    capsys: pytest.CaptureFixture[str], cli_env: Path, tmp_path: Path
) -> None:
    status, _, err = roster_import(capsys, tmp_path / "missing.csv")
    assert status == 1
    missing = tmp_path / "missing.csv"
    assert err == f"carebridge: error: {missing}: cannot be read: No such file or directory\n"


def test_batch_helpers_of_the_keyring_match_the_one_shot_ones() -> None:
    for pepper in (b"p" * 32, b"q" * 64, b"r" * 65, b"s" * 200):
        keyring = Keyring(
            Keyring.generate(development=True).keks,
            Keyring.generate(development=True).signing,
            pepper,
            development=True,
        )
        hasher = keyring.lookup_hasher("dob-ssn4")
        for value in ("1961-03-14|4821", "", "Müller", "x" * 300):
            assert hasher(value) == keyring.lookup_hash("dob-ssn4", value)
    assert hasher("x") != keyring.lookup_hash("dob", "x")
    blob = keyring.encryptor()(b"details", associated_data("roster-member", "rm_1"))
    assert keyring.decrypt(blob, associated_data("roster-member", "rm_1")) == b"details"
