"""``carebridge keys rotate`` lands in the audit log, with key IDs only (issue 17); with no
audit log to write to, the keyring does not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, select, text

from carebridge import keyring
from carebridge.audit import AuditRecord
from carebridge.db import make_engine
from tests.test_cli import UNREACHABLE, assert_one_line_error, run, secret_strings


@pytest.fixture
def keyring_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    """A development keyring file, and the test's migrated database (either backend)."""
    data = tmp_path / "data"
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(data))
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", database_url)
    path = data / "keyring.json"
    keyring.load_or_create_development(path)
    return path


def rotations(database_url: str) -> list[Row[Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            query = select(AuditRecord.__table__).where(AuditRecord.action == "keys.rotate")
            return list(connection.execute(query).all())
    finally:
        engine.dispose()


def test_keys_rotate_is_in_the_audit_log_with_key_ids_only(
    capsys: pytest.CaptureFixture[str], keyring_file: Path, database_url: str
) -> None:
    before = keyring.load(keyring_file)

    status, _, err = run(capsys, "keys", "rotate")

    assert (status, err) == (0, "")
    after = keyring.load(keyring_file)
    [record] = rotations(database_url)
    assert record.actor == "operator"
    assert record.outcome == "allowed"
    assert record.target == f"kek:{after.active_kek.kid} signing:{after.active_signing_key.kid}"
    assert before.active_kek.kid not in record.target
    for secret in secret_strings(keyring_file):
        assert all(secret[:12] not in str(value) for value in record)
    status, out, _ = run(capsys, "audit", "verify")
    assert status == 0 and "audit log intact" in out


def test_keys_rotate_refuses_without_a_reachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", UNREACHABLE)
    keyring_file = tmp_path / "data" / "keyring.json"
    keyring.load_or_create_development(keyring_file)
    unchanged = keyring_file.read_bytes()

    status, out, err = run(capsys, "keys", "rotate")

    assert status == 1
    assert_one_line_error(err)
    assert "keys not rotated: the audit log cannot be written" in err
    assert "hunter2" not in err and "rotated" not in out
    assert keyring_file.read_bytes() == unchanged


def test_a_rotation_whose_audit_record_cannot_commit_puts_the_keyring_back(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    postgres_database: str,
) -> None:
    # The record is written, the file replaced, then the commit fails (a deferred
    # constraint trigger of PostgreSQL's refuses the record at commit time).
    engine = make_engine(postgres_database)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON audit_log "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )
    engine.dispose()
    data = tmp_path / "data"
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(data))
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", postgres_database)
    path = data / "keyring.json"
    before = keyring.load_or_create_development(path)

    status, _, err = run(capsys, "keys", "rotate")

    assert status == 1
    assert_one_line_error(err)
    assert "keys not rotated" in err
    after = keyring.load(path)
    assert [k.kid for k in after.keks] == [k.kid for k in before.keks]
    assert [k.kid for k in after.signing] == [k.kid for k in before.signing]
    assert rotations(postgres_database) == []
