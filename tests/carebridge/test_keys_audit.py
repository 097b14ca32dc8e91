"""``carebridge keys rotate`` lands in the audit log, with key IDs only (issue 17); with no
audit log to write to, the keyring does not change; a keyring once replaced is never taken
back, and a file that could not be replaced is recorded as a rotation not done."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Row, event, select, text
from sqlalchemy.orm import Session

from carebridge import keyring
from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import make_engine
from tests.carebridge.test_cli import UNREACHABLE, assert_one_line_error, run, secret_strings


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
            query = (
                select(AuditRecord.__table__)
                .where(AuditRecord.action == "keys.rotate")
                .order_by(AuditRecord.seq)
            )
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


def _refuse_audit_records_at_commit(database_url: str) -> None:
    """A deferred constraint trigger of PostgreSQL's refuses every audit record as its
    transaction commits: the record is written, the COMMIT fails."""
    engine = make_engine(database_url)
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


AAD = b"thread:t_1"


def test_a_key_wrapped_while_a_failed_rotation_commits_still_unwraps(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    postgres_database: str,
) -> None:
    # Another process (a replica starting, the worker) loads the keyring file while the
    # rotation's audit record commits, and wraps a thread's data key with it. The commit
    # fails. Whatever that process wrapped must unwrap with the file as it is left:
    # a keyring written and then taken back would strand it for good.
    _refuse_audit_records_at_commit(postgres_database)
    data = tmp_path / "data"
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(data))
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", postgres_database)
    path = data / "keyring.json"
    keyring.load_or_create_development(path)
    unchanged = path.read_bytes()
    wrapped: list[bytes] = []

    def another_process_loads_the_keyring(_connection: Connection) -> None:
        wrapped.append(keyring.load(path).wrap_data_key(keyring.new_data_key(), AAD))

    event.listen(Engine, "commit", another_process_loads_the_keyring)
    try:
        status, _, err = run(capsys, "keys", "rotate")
    finally:
        event.remove(Engine, "commit", another_process_loads_the_keyring)

    assert status == 1
    assert_one_line_error(err)
    assert "keys not rotated: the audit log cannot be written" in err
    assert wrapped
    left = keyring.load(path)
    for blob in wrapped:
        assert len(left.unwrap_data_key(blob, AAD)) == 32
    assert path.read_bytes() == unchanged
    assert rotations(postgres_database) == []


def test_a_rotation_whose_keyring_file_cannot_be_written_is_recorded_as_not_done(
    capsys: pytest.CaptureFixture[str], keyring_file: Path, database_url: str
) -> None:
    # The record committed; then the file cannot be replaced (here: its name is taken by
    # a directory). The log must not say the keys rotated when they did not.
    before = keyring_file.read_bytes()
    taken: list[bool] = []

    def file_becomes_unwritable(_session: Session) -> None:
        if not taken:
            taken.append(True)
            keyring_file.unlink()
            keyring_file.mkdir()

    event.listen(Session, "after_commit", file_becomes_unwritable)
    try:
        status, out, err = run(capsys, "keys", "rotate")
    finally:
        event.remove(Session, "after_commit", file_becomes_unwritable)
        keyring_file.rmdir()
        keyring_file.write_bytes(before)

    assert status == 1 and "rotated" not in out
    assert_one_line_error(err)
    assert "keys not rotated: keyring file" in err
    assert "cannot be written" in err and "recorded in the audit log" in err
    done, undone = rotations(database_url)
    assert (done.outcome, undone.outcome) == ("allowed", "failed")
    assert done.target == undone.target
    status, out, _ = run(capsys, "audit", "verify")
    assert status == 0 and "audit log intact" in out


def test_overlapping_rotations_keep_both_new_keks(keyring_file: Path, database_url: str) -> None:
    # Two operators rotate at once: each read the same keyring, and the later write dropped
    # the earlier one's KEK, under which a replica may already have wrapped thread keys.
    outcome: list[int] = []

    def second_rotation() -> None:
        try:
            outcome.append(main(["keys", "rotate"]))
        except SystemExit as exc:
            outcome.append(int(exc.code or 0))

    lock = keyring_file.with_name(keyring_file.name + ".lock")
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first rotation is under way
        second = threading.Thread(target=second_rotation)
        second.start()
        second.join(1.0)
        assert second.is_alive(), "the second rotation did not wait for the first"
        first = keyring.load(keyring_file).rotated()
        keyring.save(first, keyring_file)
    second.join(30)

    assert outcome == [0]
    final = keyring.load(keyring_file)
    assert first.active_kek.kid in {kek.kid for kek in final.keks}
    assert final.active_kek.kid != first.active_kek.kid
