"""The ``carebridge`` command line: arguments, errors, db, keys, audit, and the real serve."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy.engine import make_url

from carebridge import keyring
from carebridge.cli import main
from carebridge.keyring import Keyring, associated_data
from carebridge.migrate import head_revision

UNREACHABLE = "postgresql://carebridge:hunter2@127.0.0.1:1/carebridge"
CONSOLE_SCRIPT = Path(sys.executable).with_name("carebridge")
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit status the console script would have, with what it printed."""
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err: str) -> None:
    assert err.endswith("\n")
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert "error: " in err


def secret_strings(path: Path) -> list[str]:
    document = json.loads(path.read_text())
    found = [document["pepper"], *(k["secret"] for k in document["kek"])]
    for entry in document["signing"]:
        found += [entry["jwk"][name] for name in PRIVATE_JWK_MEMBERS if name in entry["jwk"]]
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Development settings with everything under a fresh data directory."""
    path = tmp_path / "data"
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(path))
    return path


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``serve`` runs up to the point of serving; what it would have served is recorded."""
    calls: list[dict[str, Any]] = []

    def record(app: str, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr("carebridge.cli.serve.uvicorn.run", record)
    # Logging setup would replace pytest's capture handlers.
    monkeypatch.setattr("carebridge.cli.serve.configure_logging", lambda *args: None)
    return calls


# Arguments


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["db"],
        ["db", "upgrade"],
        ["db", "current"],
        ["keys"],
        ["keys", "rotate"],
        ["keys", "generate"],
        ["keys", "list"],
        ["audit"],
        ["audit", "verify"],
        ["worker"],
        ["accounts", "unlock"],
        ["accounts", "disable"],
        ["accounts", "enable"],
        ["roster", "import"],
        ["roster", "stats"],
        ["roster", "verify-unlock"],
    ],
)
def test_help_exits_zero_without_touching_anything(
    capsys: pytest.CaptureFixture[str], data_dir: Path, command: list[str]
) -> None:
    status, out, err = run(capsys, *command, "--help")
    assert status == 0
    assert out.startswith(f"usage: carebridge {' '.join(command)}".rstrip())
    assert err == ""
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        (["serve", "--port", "99999"], "invalid port '99999'"),
        (["serve", "--port", "0"], "invalid port '0'"),
        (["serve", "--port", "eighty"], "invalid port 'eighty'"),
        (["serve", "--workers", "0"], "invalid worker count '0'"),
        (["serve", "--verbose"], "unrecognized arguments: --verbose"),
        (["launch"], "invalid choice: 'launch'"),
        (["keys", "shred"], "invalid choice: 'shred'"),
        (["keys", "rotate", "--alg", "HS256"], "invalid choice: 'HS256'"),
        (["keys", "generate"], "the following arguments are required: --out"),
        ([], "the following arguments are required: COMMAND"),
        (["db"], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], data_dir: Path, command: list[str], complaint: str
) -> None:
    status, out, err = run(capsys, *command)
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert complaint in err
    assert "--help" in err
    assert not data_dir.exists()


# Configuration


@pytest.mark.parametrize("command", [["serve"], ["db", "current"], ["keys", "list"]])
def test_bad_configuration_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    uvicorn_calls: list[dict[str, Any]],
    command: list[str],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_ENV", "staging-hunter2")
    status, out, err = run(capsys, *command)
    assert status == 2
    assert_one_line_error(err)
    assert "CAREBRIDGE_ENV" in err
    assert "hunter2" not in out + err
    assert uvicorn_calls == []


def test_misspelt_setting_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_ULR", UNREACHABLE)
    status, _, err = run(capsys, "db", "current")
    assert status == 2
    assert_one_line_error(err)
    assert "did you mean CAREBRIDGE_DATABASE_URL?" in err
    assert "hunter2" not in err


def test_malformed_database_url_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", "postgresql://u:hunter2@db.internal:port/x")
    status, out, err = run(capsys, "db", "current")
    assert status == 2
    assert_one_line_error(err)
    assert "CAREBRIDGE_DATABASE_URL" in err
    assert "hunter2" not in out + err


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"], ["audit", "verify"]])
def test_unreachable_database_is_one_line_exit_1_without_the_password(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    command: list[str],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", UNREACHABLE)
    status, out, err = run(capsys, *command)
    assert status == 1
    assert_one_line_error(err)
    assert "database" in err
    assert "hunter2" not in out + err


def test_serve_with_an_unreachable_database_does_not_start(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", UNREACHABLE)
    status, out, err = run(capsys, "serve")
    assert status == 1
    assert_one_line_error(err)
    assert "hunter2" not in out + err
    assert uvicorn_calls == []


def test_production_serve_on_defaults_names_the_setting_and_serves_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_ENV", "production")
    status, _, err = run(capsys, "serve")
    assert status == 2
    assert_one_line_error(err)
    assert "CAREBRIDGE_ISSUER" in err
    assert uvicorn_calls == []
    # Refused before anything was created: no generated keys, no SQLite file.
    assert not data_dir.exists()


def test_production_serve_refuses_a_development_keyring(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(Keyring.generate(development=True), path)
    for name, value in {
        "CAREBRIDGE_ENV": "production",
        "CAREBRIDGE_ISSUER": "https://id.example.org",
        "CAREBRIDGE_DATABASE_URL": UNREACHABLE,
        "CAREBRIDGE_KEYRING_FILE": str(path),
        "CAREBRIDGE_SMS_BACKEND": "twilio",
        "CAREBRIDGE_EMAIL_BACKEND": "smtp",
        "CAREBRIDGE_SMTP_URL": "smtps://carebridge:hunter2@smtp.example.org:465",
        "CAREBRIDGE_METRICS_TOKEN": "scrape-0123456789abcdef",
    }.items():
        monkeypatch.setenv(name, value)
    status, out, err = run(capsys, "serve")
    assert status == 2
    assert_one_line_error(err)
    assert str(path) in err
    assert "development" in err
    assert uvicorn_calls == []
    assert not [s for s in secret_strings(path) if s in out + err]


# Database


def test_db_upgrade_on_an_empty_database_then_audit_verify_passes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    empty_database_url: str,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", empty_database_url)
    status, out, _ = run(capsys, "db", "current")
    assert status == 0
    assert out.startswith("empty ")
    assert "needs 'carebridge db upgrade'" in out

    status, out, err = run(capsys, "db", "upgrade")
    assert (status, err) == (0, "")
    assert out.strip().endswith(f"is at {head_revision()}")

    status, out, _ = run(capsys, "db", "current")
    assert status == 0
    assert out.startswith(f"{head_revision()} ")
    assert "current)" in out

    status, out, err = run(capsys, "audit", "verify")
    assert (status, err) == (0, "")
    assert "audit log intact: 0 records" in out

    # Upgrading an up-to-date database is harmless.
    assert run(capsys, "db", "upgrade")[0] == 0


def test_db_commands_never_print_the_database_password(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    empty_postgres_database: str,
) -> None:
    url = make_url(empty_postgres_database)
    # The test server trusts local connections, so a password it ignores is fine here.
    password = url.password or "hunter2"
    url = url.set(password=password)
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", url.render_as_string(hide_password=False))
    status, out, err = run(capsys, "db", "upgrade")
    assert (status, err) == (0, "")
    assert "***" in out
    for command in (["db", "current"], ["audit", "verify"], ["keys", "list"]):
        status, out, err = run(capsys, *command)
        assert status == 0
        assert str(password) not in out + err


def test_audit_verify_on_an_unmigrated_database_says_to_run_db_upgrade(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    empty_database_url: str,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", empty_database_url)
    status, out, err = run(capsys, "audit", "verify")
    assert status == 1
    assert out == ""
    assert_one_line_error(err)
    assert "run 'carebridge db upgrade'" in err


def test_serve_migrates_embedded_sqlite_but_not_postgresql(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    empty_database_url: str,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", empty_database_url)
    status, _, err = run(capsys, "serve")
    if empty_database_url.startswith("sqlite"):
        assert (status, err) == (0, "")
        assert len(uvicorn_calls) == 1
        assert run(capsys, "audit", "verify")[0] == 0
    else:
        # PostgreSQL is shared by replicas: the operator migrates it, once.
        assert status == 1
        assert_one_line_error(err)
        assert "run 'carebridge db upgrade'" in err
        assert uvicorn_calls == []


def test_serve_hands_its_arguments_to_uvicorn(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_env: Path,
    tmp_path: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    status, _, err = run(capsys, "serve", "--host", "127.0.0.2", "--port", "8123", "--workers", "3")
    assert (status, err) == (0, "")
    (call,) = uvicorn_calls
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.2", 8123, 3)
    assert call["app"] == "carebridge.app:create_app_from_env"
    assert call["factory"] is True


# Keys


def test_keys_generate_writes_an_owner_only_production_keyring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "secrets" / "keyring.json"
    status, out, err = run(capsys, "keys", "generate", "--out", str(out_file))
    assert (status, err) == (0, "")
    assert _mode(out_file) == 0o600
    made = keyring.load(out_file)
    assert made.development is False
    assert made.active_signing_key.alg == "ES256"
    assert f"CAREBRIDGE_KEYRING_FILE={out_file}" in out
    assert not [s for s in secret_strings(out_file) if s in out]


def test_keys_generate_can_make_rs256_signing_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "keyring.json"
    assert run(capsys, "keys", "generate", "--out", str(out_file), "--alg", "RS256")[0] == 0
    assert keyring.load(out_file).active_signing_key.alg == "RS256"


def test_keys_generate_refuses_to_overwrite_a_keyring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "keyring.json"
    assert run(capsys, "keys", "generate", "--out", str(out_file))[0] == 0
    before = out_file.read_bytes()
    status, out, err = run(capsys, "keys", "generate", "--out", str(out_file))
    assert status == 1
    assert out == ""
    assert_one_line_error(err)
    assert "refusing to overwrite" in err
    assert out_file.read_bytes() == before


def test_keys_generate_into_an_impossible_place_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    out_file = tmp_path / "a-file" / "keyring.json"
    status, _, err = run(capsys, "keys", "generate", "--out", str(out_file))
    assert status != 0
    assert_one_line_error(err)
    assert str(out_file) in err


def test_keys_rotate_keeps_old_data_readable_and_old_tokens_valid(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    path = data_dir / "keyring.json"
    before = keyring.load_or_create_development(path)
    aad = associated_data("thread", "t-1")
    blob = before.encrypt(b"written before rotation", aad)
    wrapped = before.wrap_data_key(b"d" * 32, aad)
    old = before.active_signing_key
    token = jwt.encode({"alg": old.alg, "kid": old.kid}, {"sub": "patient-1"}, old.key)
    assert run(capsys, "db", "upgrade")[0] == 0  # the rotation's audit record goes there

    status, out, err = run(capsys, "keys", "rotate")
    assert (status, err) == (0, "")

    after = keyring.load(path)
    assert _mode(path) == 0o600
    assert after.decrypt(blob, aad) == b"written before rotation"
    assert after.unwrap_data_key(wrapped, aad) == b"d" * 32
    assert after.active_kek.kid != before.active_kek.kid
    assert after.key_id_of(after.encrypt(b"new", aad)) == after.active_kek.kid
    assert after.lookup_hash("email", "a@example.org") == before.lookup_hash(
        "email", "a@example.org"
    )
    jwks = after.jwks()
    assert [key["kid"] for key in jwks["keys"]] == [after.active_signing_key.kid, old.kid]
    assert jwt.decode(token, KeySet.import_key_set(jwks)).claims == {"sub": "patient-1"}
    assert after.active_kek.kid in out
    assert not [s for s in secret_strings(path) if s in out]


def test_keys_rotate_in_production_keeps_the_production_keyring(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "keyring.json"
    assert run(capsys, "keys", "generate", "--out", str(path))[0] == 0
    monkeypatch.setenv("CAREBRIDGE_ENV", "production")
    monkeypatch.setenv("CAREBRIDGE_KEYRING_FILE", str(path))
    assert run(capsys, "db", "upgrade")[0] == 0
    status, _, err = run(capsys, "keys", "rotate", "--alg", "RS256")
    assert (status, err) == (0, "")
    after = keyring.load(path)
    assert after.development is False
    assert [k["alg"] for k in after.jwks()["keys"]] == ["RS256", "ES256"]


def test_keys_list_shows_ids_and_never_secret_material(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert run(capsys, "db", "upgrade")[0] == 0
    assert run(capsys, "keys", "rotate", "--alg", "RS256")[0] == 0
    path = data_dir / "keyring.json"
    status, out, err = run(capsys, "keys", "list")
    assert (status, err) == (0, "")
    ring = keyring.load(path)
    for kid in [k.kid for k in ring.keks] + [s.kid for s in ring.signing]:
        assert kid in out
    assert f"{ring.active_kek.kid}  created" in out
    assert "(development)" in out
    for secret in secret_strings(path):
        assert secret[:12] not in out


def test_keys_commands_make_an_owner_only_data_directory(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    # The same directory later holds the SQLite database: it must not start out readable.
    assert run(capsys, "keys", "list")[0] == 0
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "keyring.json") == 0o600


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "rotate"], ["worker", "--once"]])
def test_missing_keyring_file_is_named_exit_2_and_not_created(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    tmp_path: Path,
    command: list[str],
) -> None:
    path = tmp_path / "keys" / "keyring.json"
    monkeypatch.setenv("CAREBRIDGE_KEYRING_FILE", str(path))
    status, _, err = run(capsys, *command)
    assert status == 2
    assert_one_line_error(err)
    assert f"keyring file {path} does not exist" in err
    assert not path.exists()


def test_schema_commands_need_no_key_material(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    # A migration job can run without the keyring mounted.
    path = tmp_path / "keys" / "keyring.json"
    monkeypatch.setenv("CAREBRIDGE_KEYRING_FILE", str(path))
    assert run(capsys, "db", "upgrade")[0] == 0
    assert run(capsys, "audit", "verify")[0] == 0
    assert not path.exists()


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "rotate"]])
def test_corrupt_keyring_file_is_named_exit_2_and_left_alone(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: list[str],
) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(Keyring.generate(development=True), path)
    secrets = secret_strings(path)
    document = json.loads(path.read_text())
    del document["signing"][0]["jwk"]["crv"]
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    monkeypatch.setenv("CAREBRIDGE_KEYRING_FILE", str(path))
    status, out, err = run(capsys, *command)
    assert status == 2
    assert_one_line_error(err)
    assert f"keyring file {path} is corrupt" in err
    assert not [s for s in secrets if s in out + err]
    assert path.read_bytes() == before


# The real console script, as the README runs it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
    return {**env, **settings}


def test_readme_serve_command_starts_ready_from_an_empty_directory(tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.exists(), f"console script missing at {CONSOLE_SCRIPT}"
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "serve", "--port", str(port)],
            cwd=workdir,
            env=_clean_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        status = None
        while status != 200:
            assert server.poll() is None, f"serve exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"no /healthz in 60 s: {log_path.read_text()}"
            try:
                status = httpx.get(f"{base}/healthz", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.2)
        keyring_file = workdir / "var" / "keyring.json"
        assert keyring_file.exists()
        assert _mode(keyring_file) == 0o600
        assert keyring.load(keyring_file).development is True
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_production_serve_on_defaults_exits_naming_the_setting(tmp_path: Path) -> None:
    port = _free_port()
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_clean_environment(CAREBRIDGE_ENV="production"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "CAREBRIDGE_ISSUER" in result.stderr
    assert "Uvicorn running" not in result.stderr
    assert not (tmp_path / "var").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
