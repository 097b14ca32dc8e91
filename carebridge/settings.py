"""Settings from ``CAREBRIDGE_*`` environment variables (documented in docs/configuration.md).

Every problem becomes a :class:`ConfigError` whose message names the setting and never
echoes its value (a database URL may carry a password).
"""

from __future__ import annotations

import difflib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from email.errors import NonASCIILocalPartDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import parseaddr
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from carebridge import time_zones

PREFIX = "CAREBRIDGE_"
# Variables the test suite reads; not service settings.
_RESERVED_PREFIXES = (f"{PREFIX}TEST_",)


class ConfigError(Exception):
    """A setting is missing, malformed or unsafe for the chosen environment."""


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Role(StrEnum):
    """What a process does, which sets how long it lets the database take (its budget)."""

    WEB = "web"
    WORKER = "worker"
    CLI = "cli"


class SmsBackend(StrEnum):
    CONSOLE = "console"
    TWILIO = "twilio"


class EmailBackend(StrEnum):
    CONSOLE = "console"
    SMTP = "smtp"


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ADDRESS_HEADER = HeaderRegistry()
# A production metrics token shorter than this is a password someone chose, not a secret.
METRICS_TOKEN_MIN_LENGTH = 16


def is_one_address(value: str) -> bool:
    """Whether ``value`` is exactly one e-mail address ("Name <a@b>" or "a@b") on one
    line: what may go into a From or To header (the standard library's header parser
    decides, not a pattern of ours)."""
    # Control characters (CR, LF, NUL, tab…) and Unicode's line breaks: never in a header.
    if not value or value != value.strip():
        return False
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        return False
    try:
        header = _ADDRESS_HEADER("To", value)
    except (ValueError, IndexError, TypeError):
        return False
    if not isinstance(header, AddressHeader):
        return False
    # An internationalized local part (josé@) is an address (RFC 6531: a relay without
    # SMTPUTF8 refuses it, a dead letter); every other defect is a malformed header.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects or len(header.addresses) != 1 or header.groups[0].display_name:
        return False
    address = header.addresses[0]
    return bool(address.username and address.domain and address.addr_spec.count("@") == 1)


@dataclass(frozen=True)
class SmtpRelay:
    """``CAREBRIDGE_SMTP_URL``, parsed: where and how to hand e-mails over."""

    host: str
    port: int
    implicit_tls: bool  # smtps://; otherwise STARTTLS, unless plain on loopback
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def plain(self) -> bool:
        """smtp:// to a loopback relay may stay unencrypted (a local relay, tests); it
        still upgrades when the relay offers STARTTLS."""
        return not self.implicit_tls and self.host in _LOOPBACK

    @classmethod
    def parse(cls, url: str) -> SmtpRelay:
        # The messages never quote the URL: it carries the relay's password.
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("is not a valid smtp:// or smtps:// URL") from None
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("must be an smtps:// (TLS) or smtp:// (STARTTLS) URL")
        if not parts.hostname:
            raise ValueError("must name the relay's host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be scheme://user:password@host:port, nothing after")
        if port == 0:
            raise ValueError("must have a port between 1 and 65535")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=port or (465 if implicit else 587),
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


def _provider_url(value: str) -> str:
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
    if not secure or not parts.hostname or parts.fragment or parts.username:
        raise ValueError("must be an https:// URL (http only on loopback, for tests)")
    return value


ClientAuth = Literal["client_secret_basic", "client_secret_post"]


class UpstreamProvider(BaseModel):
    """One entry of the upstream providers file (docs/configuration.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    display_name: str = Field(min_length=1, max_length=60)
    kind: Literal["oidc", "oauth2"]
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: SecretStr
    scopes: list[str] = Field(default_factory=list)
    token_endpoint_auth_method: ClientAuth = "client_secret_basic"  # noqa: S105  (a method name)
    # OpenID Connect: everything else comes from the discovery document.
    discovery_url: str | None = None
    # Plain OAuth 2: the endpoints, and where the profile answer keeps the stable user ID.
    authorize_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    subject_field: str = Field(default="id", pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
    # Names the namespace of an OAuth 2 provider's user IDs; default: authorize_url's origin.
    issuer: str | None = Field(default=None, min_length=1, max_length=300)
    timeout_seconds: float = Field(default=5.0, gt=0, le=30)

    @field_validator("discovery_url", "authorize_url", "token_url", "userinfo_url")
    @classmethod
    def _secure_url(cls, value: str | None) -> str | None:
        return None if value is None else _provider_url(value)

    @model_validator(mode="after")
    def _complete_for_its_kind(self) -> UpstreamProvider:
        if self.kind == "oidc":
            if not self.discovery_url:
                raise ValueError("an oidc provider needs discovery_url")
            if self.authorize_url or self.token_url or self.userinfo_url or self.issuer:
                raise ValueError("an oidc provider takes its endpoints from discovery_url only")
        elif not (self.authorize_url and self.token_url and self.userinfo_url):
            raise ValueError("an oauth2 provider needs authorize_url, token_url and userinfo_url")
        return self

    @property
    def request_scopes(self) -> list[str]:
        """The scopes asked for; an OpenID Connect request always includes "openid"."""
        if self.kind == "oidc" and "openid" not in self.scopes:
            return ["openid", *self.scopes]
        return list(self.scopes)

    @property
    def subject_issuer(self) -> str:
        """For OAuth 2 providers, what (issuer, subject) links use as the issuer."""
        if self.issuer:
            return self.issuer
        parts = urlsplit(self.authorize_url or "")
        return f"{parts.scheme}://{parts.netloc}"


_PROVIDERS = TypeAdapter(list[UpstreamProvider])


def load_upstream_providers(path: Path) -> tuple[UpstreamProvider, ...]:
    """The providers file, validated, or one ConfigError naming the file and the problem."""
    where = f"{PREFIX}UPSTREAM_PROVIDERS_FILE {path}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    except ValueError:  # also UnicodeDecodeError; their messages quote the content
        raise ConfigError(f"{where} is not a JSON document") from None
    try:
        providers = _PROVIDERS.validate_python(document)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        # ("entry 2", "discovery_url"): which provider, then which field.
        field = ", ".join(
            f"entry {part}" if isinstance(part, int) else str(part) for part in error["loc"]
        )
        field = field or "the document"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {field}: {message}") from None
    names = [provider.name for provider in providers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: provider names must be unique")
    return tuple(providers)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path("var")
    database_url: str = ""
    issuer: str = "http://127.0.0.1:8000"
    keyring_file: Path | None = None
    sms_backend: SmsBackend = SmsBackend.CONSOLE
    redis_url: str = ""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    forwarded_allow_ips: str = "127.0.0.1"
    metrics_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Demo mode (`carebridge serve --demo` sets it): synthetic data and the demo provider app.
    demo: bool = False
    # How often each web process links new audit records into the chain (PostgreSQL):
    # also the longest a record stays written but unchained while the service is up.
    audit_chain_seconds: float = Field(default=1.0, gt=0, le=60)
    # How long each role lets one database statement, lock wait or wait for a pooled
    # connection take (carebridge.db.Budget; docs/operations.md). Web requests answer 503
    # past theirs; the worker's jobs and the CLI's commands (a million-row roster import)
    # work in larger steps.
    db_timeout_web_seconds: float = Field(default=5.0, ge=0.5, le=30)
    db_timeout_worker_seconds: float = Field(default=60.0, ge=1, le=3600)
    db_timeout_cli_seconds: float = Field(default=900.0, ge=1, le=86400)

    # Accounts and sessions (identity/)
    session_idle_minutes: int = Field(default=15, ge=1, le=24 * 60)
    session_absolute_hours: int = Field(default=12, ge=1, le=24 * 30)
    mfa_required: bool = True
    password_min_length: int = Field(default=8, ge=8, le=64)
    argon2_memory_kib: int = Field(default=19 * 1024, ge=8 * 1024)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    upstream_providers_file: Path | None = None
    # Identity verification: what tells apart people sharing a DOB and SSN last 4, and
    # after how many failures on a birth date (or 10 from an address) it asks for last
    # name and ZIP as well (0: always). identity/flows/verify.py.
    verify_tiebreaker: Literal["last_name", "zip"] = "last_name"
    verify_step_up_after: int = Field(default=3, ge=0, le=100)
    activation_code_days: int = Field(default=30, ge=1, le=365)
    # Wrong dates of birth, from any accounts, that void an activation code.
    activation_code_max_failures: int = Field(default=5, ge=1, le=100)
    # The admin API's roster upload (1,000,000 rows are about 80 MiB).
    roster_upload_max_mib: int = Field(default=256, ge=1, le=4096)
    # Who identity's e-mails come from, "Name <address>": the name is shown to patients
    # and to anyone who sees their inbox, so it should not name a condition (a clinic's
    # own name may). Also the name the e-mails' text signs with.
    email_from: str = Field(default="carebridge <no-reply@localhost>", min_length=3, max_length=200)

    # E-mail delivery (carebridge/mail/): the console prints e-mails to the terminal (the
    # embedded default, refused in production); smtp sends them through a relay at
    # smtp_url: smtps:// is implicit TLS, smtp:// must upgrade with STARTTLS (plain only
    # to a loopback relay). Certificates are always verified, against smtp_ca_file when
    # the relay has a private CA, else the system's.
    email_backend: EmailBackend = EmailBackend.CONSOLE
    smtp_url: SecretStr | None = None
    # Per connection and per command; well inside the outbox lease (60 s) of one e-mail.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=30)
    smtp_ca_file: Path | None = None

    @field_validator("email_from")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        # It becomes the From header: one address, no header smuggled after it.
        if not is_one_address(value):
            raise ValueError('must be one address, "Name <address>", on one line')
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            SmtpRelay.parse(value.get_secret_value())  # raises ValueError, never echoing it
        return value

    @field_validator("smtp_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("must name a readable file of PEM certificates")
        return value

    @model_validator(mode="after")
    def _smtp_backend_has_a_relay(self) -> Settings:
        if self.email_backend is EmailBackend.SMTP and self.smtp_relay is None:
            raise ValueError("CAREBRIDGE_SMTP_URL is required with CAREBRIDGE_EMAIL_BACKEND=smtp")
        return self

    # E-mail verification (identity/flows/email_verification.py): how long a link and
    # code stay usable, and how many e-mails (verification codes and "someone tried to
    # sign up with your address" notices) one address receives in an hour at most: past
    # it, the answer to whoever asked stays the same and nothing is sent.
    email_verification_hours: int = Field(default=24, ge=1, le=72)
    emails_per_address_per_hour: int = Field(default=3, ge=1, le=20)

    # Step-up for sensitive changes (identity/authn.py): password change, second factors,
    # linking a sign-in method, exporting messages, deleting the account need the second
    # factor proved in the session within this many minutes.
    step_up_minutes: int = Field(default=5, ge=1, le=60)

    # Lost second factor without a recovery code (identity/recovery.py): hours between
    # proving identity and replacing the authenticator, while notices let the real owner
    # object ("this wasn't me").
    recovery_wait_hours: int = Field(default=24, ge=1, le=24 * 14)

    # OpenID Connect provider (identity/oidc/)
    # Defaults for every client; a client may set its own (carebridge clients create).
    access_token_seconds: int = Field(default=600, ge=60, le=3600)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    authorization_code_seconds: int = Field(default=60, ge=10, le=600)
    id_token_seconds: int = Field(default=600, ge=60, le=3600)
    # How long a process may answer from its copy of a client registration (0: never).
    client_cache_seconds: int = Field(default=5, ge=0, le=60)

    # Secure messaging (messaging/)
    message_max_chars: int = Field(default=20_000, ge=1, le=200_000)
    attachment_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    attachment_types: Annotated[list[Literal["pdf", "png", "jpeg"]], NoDecode] = Field(
        default=["pdf", "png", "jpeg"], min_length=1
    )
    retention_days_default: int = Field(default=2555, ge=1, le=36500)
    # Break the glass (messaging/break_glass.py): how long a staff member's emergency
    # access to a thread outside their pools lasts (a shift), and the shortest typed
    # reason accepted, so that "x" is not a reason an audit reviewer has to chase.
    break_glass_hours: int = Field(default=8, ge=1, le=24)
    break_glass_reason_min_chars: int = Field(default=15, ge=1, le=200)
    # Staff invites (messaging/invites.py): how long an enrolment link stays good (time
    # to sign up and set up a second factor, not long enough to lie about in a mailbox),
    # and how many a team may send an hour (a stolen admin token cannot mail-bomb).
    staff_invite_days: int = Field(default=7, ge=1, le=30)
    staff_invites_per_hour: int = Field(default=20, ge=1, le=1000)

    # Webhooks and the event feed (carebridge/events/)
    # Loopback receivers: only for tests and development (a webhook receiver on this
    # machine); otherwise loopback is refused like any private address. Refused in production.
    # Back-channel logout tokens (identity.oidc.backchannel) go through the same client.
    webhook_allow_loopback: bool = False
    # A receiver slower than this is a failed attempt (retried with the outbox's backoff);
    # a client's back-channel logout endpoint too.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # How long a rotated endpoint keeps signing with its previous secret too, so the app
    # can switch over without dropping a delivery.
    webhook_secret_overlap_hours: int = Field(default=24, ge=0, le=24 * 30)
    # How long events stay readable in the feed (and replayable); purged after.
    event_retention_days: int = Field(default=14, ge=1, le=90)
    # The longest a feed request waits for a new event (long polling), in seconds.
    event_feed_max_wait_seconds: int = Field(default=25, ge=0, le=60)
    # Feed requests waiting at once, per client and per process: each holds a task and
    # polls the database, so more would starve the thread pool other requests share.
    # Past either bound a request is answered 429 at once instead of waiting.
    event_feed_max_waiting_per_client: int = Field(default=2, ge=1, le=100)
    event_feed_max_waiting: int = Field(default=100, ge=1, le=10_000)

    @field_validator("attachment_types", mode="before")
    @classmethod
    def _attachment_types_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [kind.strip().lower() for kind in value.split(",") if kind.strip()]
        return value

    # Notifications (sms/)
    twilio_account_sid: str = Field(default="", pattern=r"^(AC[0-9a-fA-F]{32})?$")
    twilio_auth_token: SecretStr | None = None
    # Either a Messaging Service (its sender pool) or one From number sends SMS; calls
    # always need the From number.
    twilio_messaging_service_sid: str = Field(default="", pattern=r"^(MG[0-9a-fA-F]{32})?$")
    twilio_from_number: str = Field(default="", pattern=r"^(\+[1-9][0-9]{6,14})?$")
    # Another base URL for Twilio's API (tests and benchmarks point it at Prism).
    twilio_api_base_url: str = ""
    twilio_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Where Twilio reaches us (webhook URLs, signature checks); default: the issuer.
    public_base_url: str = ""
    # GSM-7 letters only: anything else turns each SMS into a 70-character UCS-2 one.
    sms_sender_label: str = Field(
        default="carebridge", max_length=30, pattern=r"^[A-Za-z0-9 .&'-]*$"
    )
    # Regions (ISO 3166 codes, comma-separated) whose numbers patients may register;
    # the first is where a number typed without +country code is read.
    sms_regions: str = Field(default="US", pattern=r"^[A-Z]{2}(,[A-Z]{2})*$")
    sms_link_hours: int = Field(default=72, ge=1, le=24 * 14)
    sms_rate_per_second: float = Field(default=1.0, gt=0, le=1000)
    voice_rate_per_second: float = Field(default=1.0, gt=0, le=100)
    notify_daily_cap: int = Field(default=1, ge=0, le=10)
    notify_weekly_cap: int = Field(default=3, ge=0, le=50)
    notify_quiet_start: str = Field(default="21:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    notify_quiet_end: str = Field(default="08:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    notify_time_zone: str = "America/New_York"
    voice_callback_number: str = Field(default="", pattern=r"^(\+[1-9][0-9]{6,14})?$")
    sms_max_attempts: int = Field(default=8, ge=1, le=50)
    # How long an attempt whose outcome is unknown (the worker died, Twilio timed out) waits
    # for Twilio's status callback before it is sent again.
    sms_reconcile_seconds: float = Field(default=600.0, gt=0)
    sms_batch_size: int = Field(default=50, ge=1, le=1000)

    @field_validator("notify_time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        # Not "localtime" or "Factory": quiet hours must not follow the server's clock.
        if not time_zones.is_canonical(value):
            raise ValueError(time_zones.PROBLEM)
        return value

    @field_validator("twilio_api_base_url", "public_base_url")
    @classmethod
    def _optional_base_url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
                raise ValueError("must be an absolute http(s) URL without a query")
        return value.rstrip("/")

    @property
    def effective_public_base_url(self) -> str:
        return self.public_base_url or self.issuer

    @field_validator("issuer")
    @classmethod
    def _issuer_is_a_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://id.example.org")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value:
            return value
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            # Fail here, as a setting, not as a traceback when the engine is made; the
            # parser's messages quote pieces of the URL, so they are not passed on.
            raise ValueError("is not a valid database URL") from None
        scheme = value.split(":", 1)[0]
        if scheme in ("postgres", "postgresql"):
            # psycopg 3 is the driver we ship; accept the URL every tool prints.
            return "postgresql+psycopg" + value[len(scheme) :]
        if scheme not in ("sqlite", "postgresql+psycopg"):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    # Derived values: computed, never configured twice.

    @property
    def smtp_relay(self) -> SmtpRelay | None:
        """The parsed ``smtp_url`` (None when unset)."""
        if self.smtp_url is None or not self.smtp_url.get_secret_value():
            return None
        return SmtpRelay.parse(self.smtp_url.get_secret_value())

    @property
    def email_sender_name(self) -> str:
        """The name part of ``email_from`` (the address when it has none)."""
        name, address = parseaddr(self.email_from)
        return name or address

    @cached_property
    def upstream_providers(self) -> tuple[UpstreamProvider, ...]:
        """Social sign-in providers from ``upstream_providers_file`` (none without one)."""
        if self.upstream_providers_file is None:
            return ()
        return load_upstream_providers(self.upstream_providers_file)

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'carebridge.db').resolve()}"

    @property
    def uses_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def db_timeout_seconds(self, role: Role) -> float:
        """The database budget of a process of ``role``."""
        return {
            Role.WEB: self.db_timeout_web_seconds,
            Role.WORKER: self.db_timeout_worker_seconds,
            Role.CLI: self.db_timeout_cli_seconds,
        }[role]

    @property
    def effective_keyring_file(self) -> Path:
        return self.keyring_file or self.data_dir / "keyring.json"

    @property
    def api_audience(self) -> str:
        """The ``aud`` of every access token this issuer mints for its own APIs."""
        return f"{self.issuer}/api"

    @property
    def issuer_is_https(self) -> bool:
        return self.issuer.startswith("https://")

    @property
    def effective_allowed_hosts(self) -> list[str]:
        hosts = [urlsplit(self.issuer).hostname or "", *self.allowed_hosts]
        if not self.is_production:
            hosts += ["127.0.0.1", "localhost", "testserver"]
        return sorted({h for h in hosts if h})

    def production_problems(self) -> list[str]:
        """Why this configuration would run production on development defaults."""
        if not self.is_production:
            return []
        problems = []
        if not self.issuer_is_https:
            problems.append("CAREBRIDGE_ISSUER must be an https:// URL in production")
        if self.uses_sqlite:
            problems.append("CAREBRIDGE_DATABASE_URL must point at PostgreSQL in production")
        if self.keyring_file is None:
            problems.append(
                "CAREBRIDGE_KEYRING_FILE must name a keyring made with "
                "'carebridge keys generate' in production"
            )
        if self.sms_backend is SmsBackend.CONSOLE:
            problems.append("CAREBRIDGE_SMS_BACKEND must be 'twilio' in production")
        if self.email_backend is EmailBackend.CONSOLE:
            problems.append("CAREBRIDGE_EMAIL_BACKEND must be 'smtp' in production")
        if self.demo:
            problems.append("CAREBRIDGE_DEMO (serve --demo) is refused in production")
        if self.webhook_allow_loopback:
            problems.append("CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK is refused in production")
        token = self.metrics_token.get_secret_value() if self.metrics_token else ""
        if len(token) < METRICS_TOKEN_MIN_LENGTH:
            problems.append(
                f"CAREBRIDGE_METRICS_TOKEN must be set, at least {METRICS_TOKEN_MIN_LENGTH} "
                "characters, in production: /metrics is public without it"
            )
        return problems


def _unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.startswith(PREFIX) and name not in known and not name.startswith(_RESERVED_PREFIXES)
    )


def load_settings() -> Settings:
    """Read settings from the environment, or raise one ConfigError naming the problem."""
    for name in _unknown_variables(os.environ):
        known = [field.upper() for field in Settings.model_fields]
        # Compared without the shared prefix, which alone made every name "close" to some
        # setting (CAREBRIDGE_PORT to CAREBRIDGE_LOG_FORMAT).
        guess = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1)
        hint = f" (did you mean {PREFIX}{guess[0]}?)" if guess else ""
        raise ConfigError(f"unknown setting {name}{hint}")
    try:
        settings = Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings: its message names them
            raise ConfigError(message) from None
        raise ConfigError(f"{PREFIX}{str(error['loc'][0]).upper()}: {message}") from None
    settings.upstream_providers  # noqa: B018  (a bad providers file stops the start)
    return settings


def require_production_ready(settings: Settings) -> None:
    problems = settings.production_problems()
    if problems:
        raise ConfigError(f"refusing to start: {problems[0]}")
