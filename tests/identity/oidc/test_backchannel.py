"""OpenID Connect Back-Channel Logout (identity/oidc/backchannel.py): when every session of
a person ends (signed out everywhere, disabled, deleted), each client with a
``backchannel_logout_uri`` and a grant from that person gets one logout token, POSTed by
the outbox to a real receiver that validates it as a relying party must (§2.6), with
joserfc against the published JWKS. No other client gets one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge import outbox, wiring
from carebridge.app import create_app
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.wiring import CareTeamFollowers
from identity import deletion
from identity.flows import account, status
from identity.oidc import backchannel, clients
from tests.identity import account_changes, factories
from tests.identity.oidc import helpers
from tests.identity.oidc.logout_receiver import LogoutReceiver, serve


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The receiver listens on loopback: allowed only by this test setting.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        webhook_allow_loopback=True,
        webhook_timeout_seconds=1.0,
    )


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def receiver(runtime: Runtime, client: TestClient) -> Iterator[LogoutReceiver]:
    jwks = client.get("/.well-known/jwks.json").json()
    yield from serve(LogoutReceiver(issuer=runtime.settings.issuer, jwks=jwks))


@dataclass
class Scene:
    person: helpers.Person
    portal: helpers.Registered  # a back-channel URI and the person's grant
    stranger: helpers.Registered  # a back-channel URI, no grant from this person
    plain: helpers.Registered  # the person's grant, no back-channel URI
    sub: str  # the person's sub with the portal (pairwise)


def _connect(client: TestClient, runtime: Runtime, registered: helpers.Registered) -> str:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    body = helpers.exchange(client, registered, answer["code"][0], verifier).json()
    return str(jwt.decode(body["id_token"], runtime.keyring.verification_keys()).claims["sub"])


@pytest.fixture
def scene(runtime: Runtime, client: TestClient, receiver: LogoutReceiver, tmp_path: Path) -> Scene:
    person = helpers.person(runtime, tmp_path)
    portal = helpers.register(
        runtime, name="Clinic portal", backchannel_logout_uri=receiver.url("portal")
    )
    stranger = helpers.register(
        runtime,
        name="Stranger",
        redirect_uri="https://rx.example/cb",
        backchannel_logout_uri=receiver.url("stranger"),
    )
    plain = helpers.register(runtime, name="Plain app", redirect_uri="https://plain.example/cb")
    receiver.clients.update(portal=portal.client_id, stranger=stranger.client_id)
    helpers.use_session(client, runtime, person.session_token)
    sub = _connect(client, runtime, portal)
    _connect(client, runtime, plain)
    return Scene(person, portal, stranger, plain, sub)


def deliver(runtime: Runtime) -> None:
    handler = backchannel.LogoutTokenHandler(runtime)
    outbox.drain(runtime, outbox.Channels(handlers={handler.channel: handler}), max_seconds=10)


def logout_rows(runtime: Runtime) -> list[outbox.OutboxMessage]:
    with runtime.sessions() as db:
        return list(
            db.scalars(
                select(outbox.OutboxMessage).where(
                    outbox.OutboxMessage.channel == backchannel.CHANNEL
                )
            )
        )


def _one_valid_token(runtime: Runtime, receiver: LogoutReceiver, scene: Scene) -> dict[str, Any]:
    deliver(runtime)
    assert receiver.refused == []
    assert list(receiver.accepted) == ["portal"]
    [claims] = receiver.accepted["portal"]
    assert claims["sub"] == scene.sub
    return claims


def test_signing_out_everywhere_sends_the_granted_client_one_valid_logout_token(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    account.sign_out_everywhere(runtime, scene.person.account_id, request_id=None)
    claims = _one_valid_token(runtime, receiver, scene)
    assert claims["iss"] == runtime.settings.issuer
    assert claims["exp"] - claims["iat"] <= 120
    assert "sid" not in claims  # every session ends: no sid (§2.4)
    assert [row.state for row in logout_rows(runtime)] == [outbox.DONE]


def test_disabling_an_account_sends_a_logout_token(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    assert status.set_active_by_id(
        runtime, scene.person.account_id, active=False, followers=CareTeamFollowers()
    )
    _one_valid_token(runtime, receiver, scene)


def test_deleting_an_account_sends_a_logout_token(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    with transaction(runtime.sessions) as db:
        assert deletion.delete_account(
            db, runtime, wiring.identity_outward(runtime), scene.person.account_id, actor="test"
        )
    _one_valid_token(runtime, receiver, scene)


def test_a_logout_token_taken_for_an_id_token_is_refused(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    """No nonce, the events claim, its own type: an RP cannot take it for an ID token."""
    account.sign_out_everywhere(runtime, scene.person.account_id, request_id=None)
    [row] = logout_rows(runtime)
    token = backchannel.logout_token(
        runtime,
        client_id=row.payload["client"],
        subject=row.payload["sub"],
        jti=row.payload["jti"],
    )
    decoded = jwt.decode(token, runtime.keyring.verification_keys())
    assert decoded.header["typ"] == "logout+jwt"
    assert "nonce" not in decoded.claims
    assert decoded.claims["events"] == {backchannel.EVENT: {}}


def test_a_logout_token_presented_to_another_client_is_refused(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    """``aud`` is that client alone: the stranger's RP refuses the portal's token."""
    account.sign_out_everywhere(runtime, scene.person.account_id, request_id=None)
    [row] = logout_rows(runtime)
    token = backchannel.logout_token(
        runtime, client_id=row.payload["client"], subject=scene.sub, jti="j1"
    )
    assert jwt.decode(token, runtime.keyring.verification_keys()).claims["aud"] == (
        scene.portal.client_id
    )
    body = f"logout_token={token}".encode()
    assert receiver.handle("/logout/stranger", "application/x-www-form-urlencoded", body) == 400
    assert receiver.handle("/logout/portal", "application/x-www-form-urlencoded", body) == 200


def test_a_client_without_a_grant_getting_a_logout_token_is_refused(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    account.sign_out_everywhere(runtime, scene.person.account_id, request_id=None)
    deliver(runtime)
    assert "stranger" not in receiver.accepted
    # Nor is one queued for the granted app that registered no URI.
    assert [row.payload["client"] for row in logout_rows(runtime)] == [scene.portal.client_id]


def test_a_logout_token_to_a_redirecting_rp_is_not_sent_on(
    runtime: Runtime, receiver: LogoutReceiver, scene: Scene
) -> None:
    receiver.answer = 302  # the redirect is never followed: retried later, then dead
    account.sign_out_everywhere(runtime, scene.person.account_id, request_id=None)
    deliver(runtime)
    [row] = logout_rows(runtime)
    assert row.state == outbox.PENDING and row.attempts == 1


def test_discovery_advertises_back_channel_logout_without_sid(client: TestClient) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is False


@pytest.mark.parametrize(
    "uri",
    ["http://10.0.0.7/logout", "http://169.254.169.254/latest", "https://rp.example/a#frag"],
)
def test_a_backchannel_logout_uri_to_a_private_address_is_refused(
    runtime: Runtime, uri: str
) -> None:
    with transaction(runtime.sessions) as db, pytest.raises(clients.ClientError):
        clients.create(
            db,
            runtime.settings,
            name="Sneaky",
            client_type="confidential",
            redirect_uris=["https://rp.example/cb"],
            scopes=["openid"],
            backchannel_logout_uri=uri,
        )


def test_changing_the_password_sends_a_logout_token(
    runtime: Runtime, client: TestClient, receiver: LogoutReceiver, scene: Scene
) -> None:
    """Every app's grant ends with a password change, so their sessions end too."""
    pat = account_changes.patient(runtime)
    helpers.use_session(client, runtime, factories.session(runtime, pat.account_id, level=2))
    sub = _connect(client, runtime, scene.portal)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    changed = client.post(
        "/api/v1/account/password",
        json={"new_password": "correct horse battery staple again"},
        headers=account_changes.bearer(token),
    )
    assert changed.status_code == 200, changed.text
    deliver(runtime)
    assert receiver.refused == []
    assert [claims["sub"] for claims in receiver.accepted["portal"]] == [sub]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_cli_registers_and_shows_a_backchannel_logout_uri(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create = ("clients", "create", "--name", "Portal", "--type", "confidential")
    create += ("--redirect-uri", "https://portal.example/cb", "--scope", "openid")
    code, out = _cli(capsys, *create, "--backchannel-logout-uri", "https://portal.example/bc")
    assert code == 0, out
    client_id = re.search(r"client_id:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    code, out = _cli(capsys, "clients", "show", client_id)
    assert "back-channel:   https://portal.example/bc" in out
    code, out = _cli(capsys, *create, "--backchannel-logout-uri", "http://10.1.2.3/bc")
    assert code != 0 and "--backchannel-logout-uri" in out
