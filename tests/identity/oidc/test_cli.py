"""``carebridge clients``: create, list, show, rotate-secret, disable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from carebridge.cli import main
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.oidc import clients
from identity.oidc.models import OidcClient


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_create_show_rotate_disable(
    cli_env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _run(
        capsys,
        "clients",
        "create",
        "--name",
        "Clinic Scheduler",
        "--type",
        "confidential",
        "--redirect-uri",
        "https://app.example.org/cb",
        "--scope",
        "openid offline_access",
        "--scope",
        "messaging.read",
        "--access-token-seconds",
        "300",
    )
    assert status == 0, out
    client_id = re.search(r"client_id:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    secret = re.search(r"client_secret:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    runtime = Runtime.build(Settings(data_dir=cli_env, database_url=database_url))
    try:
        with runtime.sessions() as db:
            row = db.get(OidcClient, client_id)
            assert row is not None and row.secret_hash == clients.hash_secret(secret)
            assert secret not in (row.secret_hash or "")
            assert row.scopes == "openid offline_access messaging.read"
            assert row.access_token_seconds == 300 and row.sector == "app.example.org"
        status, out = _run(capsys, "clients", "list")
        assert client_id in out and "Clinic Scheduler" in out
        status, out = _run(capsys, "clients", "show", client_id)
        assert "confidential (client_secret_basic)" in out and secret not in out
        status, out = _run(capsys, "clients", "rotate-secret", client_id)
        new_secret = re.search(r"client_secret:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        with runtime.sessions() as db:
            row = db.get(OidcClient, client_id)
            assert row is not None
            found = clients.Client.of(row)
        assert found.check_client_secret(new_secret) and not found.check_client_secret(secret)
        status, out = _run(capsys, "clients", "disable", client_id)
        assert status == 0 and "disabled" in out
        with runtime.sessions() as db:
            assert clients.find(db, client_id) is None
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "public", "--redirect-uri", "http://evil.example/cb"], "loopback"),
        (["--type", "public", "--redirect-uri", "https://a.example/cb#x"], "fragment"),
        (
            [
                "--type",
                "confidential",
                "--redirect-uri",
                "https://a.example/cb",
                "--scope",
                "bogus",
            ],
            "unknown scope",
        ),
        (
            [
                "--type",
                "public",
                "--redirect-uri",
                "https://a.example/cb",
                "--auth-method",
                "client_secret_basic",
            ],
            "public clients",
        ),
        (
            [
                "--type",
                "confidential",
                "--redirect-uri",
                "https://a.example/cb",
                "--auth-method",
                "private_key_jwt",
            ],
            "--jwks",
        ),
    ],
)
def test_create_refuses_bad_registrations(
    cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out = _run(capsys, "clients", "create", "--name", "X", *args)
    assert status != 0 and message in out


def test_private_key_jwt_client_takes_a_public_jwks(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ECKey.generate_key("P-256", private=True)
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    status, out = _run(
        capsys,
        "clients",
        "create",
        "--name",
        "Backend",
        "--type",
        "confidential",
        "--auth-method",
        "private_key_jwt",
        "--jwks",
        str(private),
        "--scope",
        "messaging.read",
    )
    assert status != 0 and "public" in out
    public = tmp_path / "public.json"
    public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    status, out = _run(
        capsys,
        "clients",
        "create",
        "--name",
        "Backend",
        "--type",
        "confidential",
        "--auth-method",
        "private_key_jwt",
        "--jwks",
        str(public),
        "--scope",
        "messaging.read",
    )
    assert status == 0 and "client_secret" not in out
