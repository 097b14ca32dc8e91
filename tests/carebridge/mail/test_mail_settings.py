"""The e-mail settings: the relay's URL (TLS required off loopback, credentials decoded,
never echoed), the sender, and production refusing the console."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebridge.settings import (
    ConfigError,
    EmailBackend,
    Settings,
    SmtpRelay,
    load_settings,
    require_production_ready,
)


def _load(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Settings:
    for name, value in variables.items():
        monkeypatch.setenv(f"CAREBRIDGE_{name.upper()}", value)
    return load_settings()


def _refused(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    with pytest.raises(ConfigError) as raised:
        _load(monkeypatch, **variables)
    message = str(raised.value)
    assert "hunter2" not in message and "\n" not in message
    return message


def test_the_console_is_the_embedded_default() -> None:
    settings = load_settings()
    assert settings.email_backend is EmailBackend.CONSOLE
    assert settings.smtp_relay is None


@pytest.mark.parametrize(
    ("url", "relay"),
    [
        ("smtps://mailer:hunter2@smtp.example.org:465", ("smtp.example.org", 465, True)),
        ("smtps://smtp.example.org", ("smtp.example.org", 465, True)),
        ("smtp://mailer:hunter2@smtp.example.org:587", ("smtp.example.org", 587, False)),
        ("smtp://smtp.example.org", ("smtp.example.org", 587, False)),
        ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, False)),
        ("smtp://[::1]:2525/", ("::1", 2525, False)),
    ],
)
def test_relay_urls_are_parsed(
    monkeypatch: pytest.MonkeyPatch, url: str, relay: tuple[str, int, bool]
) -> None:
    loaded = _load(monkeypatch, email_backend="smtp", smtp_url=url)
    parsed = loaded.smtp_relay
    assert parsed is not None
    assert (parsed.host, parsed.port, parsed.implicit_tls) == relay
    # Plain only to a loopback relay: smtp:// anywhere else must upgrade with STARTTLS.
    assert parsed.plain is (relay[0] in ("127.0.0.1", "::1"))
    assert "hunter2" not in repr(parsed) and "hunter2" not in repr(loaded)


def test_relay_credentials_are_url_decoded() -> None:
    relay = SmtpRelay.parse("smtps://mailer%40clinic.example:p%3Ass%2Fw%40rd@smtp.example.org")
    assert (relay.username, relay.password) == ("mailer@clinic.example", "p:ss/w@rd")


@pytest.mark.parametrize(
    "url",
    [
        "http://mailer:hunter2@smtp.example.org",
        "smtp+starttls://mailer:hunter2@smtp.example.org",
        "smtp://mailer:hunter2@",
        "smtps://mailer:hunter2@smtp.example.org:99999",
        "smtps://mailer:hunter2@smtp.example.org:0",
        "smtps://mailer:hunter2@smtp.example.org:port",
        "smtps://mailer:hunter2@smtp.example.org/inbox",
        "smtps://mailer:hunter2@smtp.example.org?starttls=no",
        "mailer:hunter2@smtp.example.org",
    ],
)
def test_bad_relay_urls_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    message = _refused(monkeypatch, email_backend="smtp", smtp_url=url)
    assert message.startswith("CAREBRIDGE_SMTP_URL: ")


def test_the_smtp_backend_needs_a_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, email_backend="smtp")
    assert message == "CAREBRIDGE_SMTP_URL is required with CAREBRIDGE_EMAIL_BACKEND=smtp"


def test_a_missing_ca_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = _refused(monkeypatch, smtp_ca_file=str(tmp_path / "nowhere.pem"))
    assert message.startswith("CAREBRIDGE_SMTP_CA_FILE: ")


@pytest.mark.parametrize(
    "sender",
    [
        "carebridge <no-reply@example.org>\r\nBcc: everyone@attacker.example",
        "carebridge <no-reply@example.org>\nX-Injected: 1",
        "no-reply@example.org, everyone@attacker.example",
        "carebridge",
        "carebridge <>",
    ],
)
def test_the_sender_must_be_one_address_on_one_line(
    monkeypatch: pytest.MonkeyPatch, sender: str
) -> None:
    message = _refused(monkeypatch, email_from=sender)
    assert message.startswith("CAREBRIDGE_EMAIL_FROM: ")


def test_production_refuses_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Production without a relay would print patients' sign-in links to its log stream.
    settings = _load(
        monkeypatch,
        env="production",
        issuer="https://id.example.org",
        database_url="postgresql://carebridge:hunter2@db.internal/carebridge",
        keyring_file="/run/secrets/keyring.json",
        sms_backend="twilio",
        metrics_token="scrape-0123456789abcdef",
    )
    with pytest.raises(ConfigError) as raised:
        require_production_ready(settings)
    assert str(raised.value) == (
        "refusing to start: CAREBRIDGE_EMAIL_BACKEND must be 'smtp' in production"
    )
