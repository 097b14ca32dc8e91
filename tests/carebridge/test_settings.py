"""Settings from CAREBRIDGE_* variables: validation, secrecy of values, production guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebridge.settings import (
    ConfigError,
    Environment,
    Settings,
    SmsBackend,
    load_settings,
    require_production_ready,
)

PRODUCTION = {
    "CAREBRIDGE_ENV": "production",
    "CAREBRIDGE_ISSUER": "https://id.example.org",
    "CAREBRIDGE_DATABASE_URL": "postgresql://carebridge:hunter2@db.internal:5432/carebridge",
    "CAREBRIDGE_KEYRING_FILE": "/run/secrets/keyring.json",
    "CAREBRIDGE_SMS_BACKEND": "twilio",
    "CAREBRIDGE_EMAIL_BACKEND": "smtp",
    "CAREBRIDGE_SMTP_URL": "smtps://carebridge:hunter2@smtp.example.org:465",
    "CAREBRIDGE_METRICS_TOKEN": "scrape-0123456789abcdef",
}


def _environment(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _config_error(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> str:
    _environment(monkeypatch, variables)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_development_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.env is Environment.DEVELOPMENT
    assert settings.uses_sqlite
    assert settings.effective_database_url == f"sqlite:///{Path('var/carebridge.db').resolve()}"
    assert settings.effective_keyring_file == Path("var/keyring.json")
    assert settings.production_problems() == []
    require_production_ready(settings)


def test_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(
        monkeypatch,
        {
            "CAREBRIDGE_DATA_DIR": "/srv/carebridge",
            "CAREBRIDGE_ISSUER": "https://id.example.org/",
            "CAREBRIDGE_LOG_LEVEL": "WARNING",
            "CAREBRIDGE_ALLOWED_HOSTS": " a.example.org, ,b.example.org ",
        },
    )
    settings = load_settings()
    assert settings.data_dir == Path("/srv/carebridge")
    assert settings.effective_keyring_file == Path("/srv/carebridge/keyring.json")
    # One spelling of the issuer everywhere it is compared: no trailing slash.
    assert settings.issuer == "https://id.example.org"
    assert settings.log_level == "WARNING"
    assert settings.allowed_hosts == ["a.example.org", "b.example.org"]


def test_unprefixed_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(monkeypatch, {"ENV": "production", "ISSUER": "ftp://x"})
    assert load_settings().env is Environment.DEVELOPMENT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAREBRIDGE_ENV", "staging-with-a-secret"),
        ("CAREBRIDGE_SMS_BACKEND", "carrier-pigeon"),
        ("CAREBRIDGE_LOG_LEVEL", "chatty"),
        ("CAREBRIDGE_LOG_FORMAT", "xml-please"),
        ("CAREBRIDGE_ISSUER", "ftp://id.example.org"),
        ("CAREBRIDGE_ISSUER", "not a url at all"),
        ("CAREBRIDGE_DATABASE_URL", "mysql://admin:hunter2@db.example.org/carebridge"),
        ("CAREBRIDGE_DATABASE_URL", "postgresql://admin:hunter2@db.example.org:port/x"),
        ("CAREBRIDGE_DATABASE_URL", "hunter2"),
    ],
)
def test_unknown_value_names_the_setting_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = _config_error(monkeypatch, {name: value})
    assert message.startswith(f"{name}: ")
    assert value not in message
    assert "hunter2" not in message


def test_env_prod_is_refused_listing_the_accepted_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _config_error(monkeypatch, {"CAREBRIDGE_ENV": "prod"})
    assert message == "CAREBRIDGE_ENV: Input should be 'development' or 'production'"


def test_issuer_carrying_credentials_is_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _config_error(
        monkeypatch, {"CAREBRIDGE_ISSUER": "https://admin:hunter2@id.example.org"}
    )
    assert "CAREBRIDGE_ISSUER" in message
    assert "hunter2" not in message


def test_misspelt_variable_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _config_error(monkeypatch, {"CAREBRIDGE_DATABSE_URL": "postgresql://u:hunter2@db/x"})
    assert "CAREBRIDGE_DATABSE_URL" in message
    assert "did you mean CAREBRIDGE_DATABASE_URL?" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("CAREBRIDGE_ENVV", "CAREBRIDGE_ENV"), ("CAREBRIDGE_LOGLEVEL", "CAREBRIDGE_LOG_LEVEL")],
)
def test_close_misspellings_get_the_right_suggestion(
    monkeypatch: pytest.MonkeyPatch, typo: str, meant: str
) -> None:
    message = _config_error(monkeypatch, {typo: "x"})
    assert message == f"unknown setting {typo} (did you mean {meant}?)"


def test_unknown_variable_without_a_close_match_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CAREBRIDGE_XYZZY", "CAREBRIDGE_PORT", "CAREBRIDGE_DEBUG"):
        message = _config_error(monkeypatch, {name: "1"})
        # A guess is offered only when one is close: not every name resembles CAREBRIDGE_ENV.
        assert message == f"unknown setting {name}"
        monkeypatch.delenv(name)


def test_a_misspelt_production_switch_does_not_fall_back_to_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _config_error(monkeypatch, {"CAREBRIDGE_ENVIRONMENT": "production"})
    assert "CAREBRIDGE_ENVIRONMENT" in message


def test_test_suite_variables_are_not_mistaken_for_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_TEST_SOMETHING", "x")
    assert load_settings().env is Environment.DEVELOPMENT


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db:5432/cb", "postgresql+psycopg://u:p@db:5432/cb"),
        ("postgresql://u:p@db/cb", "postgresql+psycopg://u:p@db/cb"),
        ("postgresql+psycopg://u:p@db/cb", "postgresql+psycopg://u:p@db/cb"),
        ("sqlite:////srv/cb.db", "sqlite:////srv/cb.db"),
    ],
)
def test_database_urls_are_normalized_to_the_shipped_driver(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", url)
    settings = load_settings()
    assert settings.effective_database_url == expected
    assert settings.uses_sqlite is expected.startswith("sqlite")


def test_fully_configured_production_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(monkeypatch, PRODUCTION)
    settings = load_settings()
    assert settings.is_production
    assert settings.sms_backend is SmsBackend.TWILIO
    assert settings.production_problems() == []
    require_production_ready(settings)
    # Production trusts only the hosts it was told about.
    assert settings.effective_allowed_hosts == ["id.example.org"]


@pytest.mark.parametrize(
    ("setting", "development_default"),
    [
        ("CAREBRIDGE_ISSUER", "http://id.example.org"),
        ("CAREBRIDGE_DATABASE_URL", None),
        ("CAREBRIDGE_DATABASE_URL", "sqlite:////srv/carebridge.db"),
        ("CAREBRIDGE_KEYRING_FILE", None),
        ("CAREBRIDGE_SMS_BACKEND", None),
        ("CAREBRIDGE_SMS_BACKEND", "console"),
        ("CAREBRIDGE_EMAIL_BACKEND", None),
        ("CAREBRIDGE_EMAIL_BACKEND", "console"),
    ],
)
def test_production_refuses_development_defaults_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, setting: str, development_default: str | None
) -> None:
    _environment(monkeypatch, PRODUCTION)
    if development_default is None:
        monkeypatch.delenv(setting)
    else:
        monkeypatch.setenv(setting, development_default)
    settings = load_settings()
    assert len(settings.production_problems()) == 1
    with pytest.raises(ConfigError, match=f"refusing to start: {setting} ") as raised:
        require_production_ready(settings)
    assert "hunter2" not in str(raised.value)


def test_production_on_all_defaults_names_the_first_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_ENV", "production")
    settings = load_settings()
    assert len(settings.production_problems()) == 6
    with pytest.raises(ConfigError, match="CAREBRIDGE_ISSUER"):
        require_production_ready(settings)


@pytest.mark.parametrize("token", [None, "", "metrics-token"], ids=["unset", "empty", "short"])
def test_production_refuses_public_metrics(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    # Without a token /metrics answers anyone: request counts by route and status, which
    # show who uses what, and when.
    _environment(monkeypatch, PRODUCTION)
    if token is None:
        monkeypatch.delenv("CAREBRIDGE_METRICS_TOKEN")
    else:
        monkeypatch.setenv("CAREBRIDGE_METRICS_TOKEN", token)
    settings = load_settings()
    assert len(settings.production_problems()) == 1
    with pytest.raises(ConfigError, match="refusing to start: CAREBRIDGE_METRICS_TOKEN ") as raised:
        require_production_ready(settings)
    assert "metrics-token" not in str(raised.value)


def test_development_accepts_what_production_refuses() -> None:
    settings = Settings(issuer="http://localhost:8000", sms_backend=SmsBackend.CONSOLE)
    assert settings.production_problems() == []
    assert "localhost" in settings.effective_allowed_hosts
