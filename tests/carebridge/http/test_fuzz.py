"""A fuzz pass over every parameter of every endpoint, on PostgreSQL (issue 17, finding 4).

Control characters, lone surrogates, over-long values and printable text beyond ASCII
go into each parameter in turn of every route the app serves; no answer may be a 5xx,
the log may hold no traceback and no error, and no crafted value may reach the log at
all. Control characters are refused (400) wherever text is read; printable text (accents,
right-to-left scripts, emoji, other digits) is refused nowhere, nor, in a header, the
bytes of UTF-8 text, nor a cookie the app does not read, nor one of its own that is
corrupted (treated as absent).

What is fuzzed comes from the app itself, so a new endpoint is fuzzed without a change
here:

- the route table: every route and method, each path parameter; every route also gets
  crafted headers (Authorization Basic and Bearer, the session and CSRF cookies, quoted
  cookie escapes in the session cookie and another site's, User-Agent, any header) and
  crafted query parameters;
- the served OpenAPI document (/api/openapi.json): each API operation's query parameters
  and the string fields of its JSON body, with the credentials its ``security`` names;
- the HTML forms the app renders, found by crawling every page as each kind of visitor
  (anonymous, signed in at each step, a verified patient, a clinician), following the
  redirects and links it gives: each field of each form, CSRF token valid; the query
  parameters the app's own links and redirects carry;
- the discovery document, for the protocol endpoints it names (authorization, token
  with each grant and client authentication it advertises, revocation, introspection,
  userinfo, end session), with the parameters their specifications define; the demo
  provider app's callback, with a sign-in started (its state and issuer valid, each
  authorization response parameter crafted in turn); and the Twilio webhooks under
  /api/twilio/, signed as Twilio signs them, with Twilio's.

The app runs in demo mode (seeded people, a provider app, a care team), as the outside
tester ran it, on one PostgreSQL database for the module.
"""

from __future__ import annotations

import base64
import html.parser
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from carebridge.app import create_app
from carebridge.demo import provider_app, seed
from carebridge.http import csrf, routing
from carebridge.http.problems import REFUSED_INPUT
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import sessions
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.logcapture import captured_log
from tests.tokens import mint

ISSUER = "http://127.0.0.1:8000"
TWILIO_TOKEN = "twilio-auth-token-for-the-fuzz"
CSRF_COOKIE = "f" * 43

# Every crafted value carries MARK: the log must never show it. Characters refused in
# every field (``STRICT``) must be answered 400 wherever they arrive.
MARK = "fz9q"
CRAFTED = {
    "nul": "\x00",
    "c0": "\x01",
    "esc": "\x1b[2J",
    "del": "\x7f",
    "c1": "\x85",
    "newline": "\r\n",
    "surrogate": "\ud800",
    # Text, as people type it: accents, a right quote (E2 80 99 in UTF-8), Hebrew, an
    # emoji, an Arabic-Indic digit.
    "printable": "é²µ Zoë\u2019s שלום 😀 ٣",
}
STRICT = {"nul", "c0", "esc", "del", "c1"}
# Refused nowhere: where one is answered "refused input", the boundary is wrong.
TOLERATED = {"printable"}
# What a header's bytes may not hold (RFC 9110 §5.5: controls but tab); any other byte is
# not looked at until the app decodes the header (Basic credentials).
HEADER_CONTROLS = {"nul", "c0", "esc", "del", "newline"}
# Over-long values: past every column and parameter limit, but under the body limit.
LONG = {"long": "L" * 300, "very long": "L" * 5000}


def _crafted(kind: str) -> str:
    if kind in LONG:
        return LONG[kind]
    return f"{MARK}{CRAFTED[kind]}{MARK}"


KINDS = [*CRAFTED, *LONG]
# For what the app checks whatever the route (any header, an unknown query parameter):
# one of each way a value goes wrong, not every one on every route.
QUICK = ["nul", "c1", "very long", "printable"]


def _bytes(value: str) -> bytes:
    # A lone surrogate as the bytes an attacker would send (not valid UTF-8).
    return value.encode("utf-8", "surrogatepass")


def _urlencode(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote_plus(_bytes(k))}={quote_plus(_bytes(v))}" for k, v in pairs)


# The world: one database, the app in demo mode, the kinds of visitors


@pytest.fixture(scope="module")
def fuzz_database(postgres_admin: Engine, postgres_template: str) -> Iterator[str]:
    name = f"cb_fuzz_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield make_url(str(postgres_admin.url)).set(database=name).render_as_string(hide_password=False)
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Visitor:
    """Someone the crawl and the fuzz act as: a session at ``level`` for ``account_id``
    (none: anonymous); each fuzzed form gets a fresh session, so a form that signs out
    does not end the rest of the pass."""

    name: str
    account_id: str | None = None
    level: int = 0

    def session(self, runtime: Runtime) -> str | None:
        if self.account_id is None:
            return None
        return factories.session(runtime, self.account_id, level=self.level)


@dataclass
class World:
    runtime: Runtime
    client: TestClient
    config: seed.DemoConfig
    visitors: list[Visitor]
    patient: Visitor
    path_values: dict[str, str]
    tokens: dict[str, str]  # security requirement -> bearer token
    extra_clients: dict[str, helpers.Registered]
    signing_key: Any


@pytest.fixture(scope="module")
def world(fuzz_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        data_dir=data / "data",
        database_url=fuzz_database,
        issuer=ISSUER,
        demo=True,
        twilio_auth_token=TWILIO_TOKEN,
        # The event feed's long poll: a fuzzed wait= answers at once.
        event_feed_max_wait_seconds=0,
    )
    runtime = Runtime.build(settings)
    config = seed.seed(runtime)
    app = create_app(runtime)
    app.state.demo_transport = httpx2.ASGITransport(app=app)
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        yield _populate(runtime, client, config, data)
    runtime.close()


def _populate(runtime: Runtime, client: TestClient, config: seed.DemoConfig, data: Path) -> World:
    from joserfc.jwk import ECKey  # noqa: PLC0415

    patient_person = helpers.person(runtime, data)
    patient = Visitor("patient", patient_person.account_id, sessions.SECOND_FACTOR)
    new = Visitor("new account", factories.account(runtime), 1)
    challenged_account = factories.account(runtime)
    factories.totp(runtime, challenged_account)
    challenged = Visitor("second factor due", challenged_account, 1)
    unverified_person = helpers.person(runtime, verified=False)
    unverified = Visitor("unverified", unverified_person.account_id, sessions.SECOND_FACTOR)
    with runtime.sessions() as db:
        from identity import accounts  # noqa: PLC0415

        clinician_account = accounts.find_by_login(db, runtime.keyring, seed.CLINICIAN_LOGIN)
    assert clinician_account is not None
    factories.totp(runtime, clinician_account.account_id)
    clinician = Visitor("clinician", clinician_account.account_id, sessions.SECOND_FACTOR)
    anonymous = Visitor("anonymous")

    app_token = mint(
        runtime,
        sub=config.client_id,
        client_id=config.client_id,
        scope="messaging.read messaging.write",
    )
    admin = helpers.register(runtime, scopes="admin.roster")
    admin_token = mint(
        runtime, sub=admin.client_id, client_id=admin.client_id, scope="admin.roster"
    )
    # Erasure requests: they delete the bystander below, after the roster operations on
    # it (the erasure route comes after them).
    eraser = helpers.register(runtime, scopes="admin.accounts")
    eraser_token = mint(
        runtime, sub=eraser.client_id, client_id=eraser.client_id, scope="admin.accounts"
    )
    recoverer = helpers.register(runtime, scopes="admin.recovery")
    recoverer_token = mint(
        runtime, sub=recoverer.client_id, client_id=recoverer.client_id, scope="admin.recovery"
    )
    webhooks = helpers.register(runtime, scopes="admin.webhooks events.read")
    webhooks_token = mint(
        runtime,
        sub=webhooks.client_id,
        client_id=webhooks.client_id,
        scope="admin.webhooks events.read",
    )
    teams = helpers.register(runtime, scopes="admin.care_teams")
    teams_token = mint(
        runtime, sub=teams.client_id, client_id=teams.client_id, scope="admin.care_teams"
    )
    signing_key = ECKey.generate_key("P-256", private=True)
    jwks = {"keys": [{**signing_key.as_dict(private=False), "kid": "k1"}]}
    extra_clients = {
        "private_key_jwt": helpers.register(
            runtime, scopes="messaging.read", auth_method="private_key_jwt", jwks=jwks
        ),
        "none": helpers.register(runtime, client_type="public"),
        "client_secret_post": helpers.register(
            runtime, scopes="messaging.read", auth_method="client_secret_post"
        ),
    }
    # A thread with an attachment, between the demo care team and the verified patient.
    bearer = {"Authorization": f"Bearer {app_token}"}
    assert patient_person.patient_id is not None
    made = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": patient_person.patient_id, "subject": "Hello", "body": "Hi"},
        headers=bearer,
    )
    assert made.status_code == 201, made.text
    thread_id = made.json()["thread"]["id"]
    attached = client.post(
        f"/api/v1/messaging/threads/{thread_id}/attachments?filename=a.pdf",
        content=b"%PDF-1.4\n%%EOF\n",
        headers={**bearer, "Content-Type": "application/octet-stream"},
    )
    assert attached.status_code == 201, attached.text
    attachment_id = attached.json()["attachments"][0]["id"]
    session_token = patient.session(runtime)
    with runtime.sessions() as db:
        loaded = sessions.load(db, runtime, session_token) if session_token else None
        handle = loaded.handle if loaded is not None else ""
    # Staff operations (unlink, re-verify) act on a bystander: the visitor stays verified.
    bystander = helpers.person(runtime, verified=False)
    bystander_patient = config.patients[0].patient_id
    helpers.link(runtime, bystander.account_id, bystander_patient)
    path_values = {
        "thread_id": thread_id,
        "attachment_id": attachment_id,
        "patient_id": bystander_patient,
        "account_id": bystander.account_id,
        "source": "acme",
        "handle": handle,
        "endpoint_id": "whk_fuzz",
        "delivery_id": "obx_fuzz",
    }
    tokens = {
        "messaging.read": app_token,
        "messaging.write": app_token,
        "admin.roster": admin_token,
        "admin.accounts": eraser_token,
        "admin.recovery": recoverer_token,
        "admin.webhooks": webhooks_token,
        "admin.care_teams": teams_token,
        "events.read": webhooks_token,
    }
    return World(
        runtime=runtime,
        client=client,
        config=config,
        visitors=[anonymous, new, challenged, unverified, patient, clinician],
        patient=patient,
        path_values=path_values,
        tokens=tokens,
        extra_clients=extra_clients,
        signing_key=signing_key,
    )


# Sending, and what was answered


@dataclass
class Sent:
    where: str  # route and method, and which parameter
    kind: str
    strict: bool  # must be refused (400)
    tolerated: bool  # must not be refused
    status: int
    request_id: str
    body: str
    location: str


@dataclass
class Fuzzer:
    world: World
    sent: list[Sent] = field(default_factory=list)

    def cookies(self, visitor: Visitor | None, session: str | None = None) -> str:
        runtime = self.world.runtime
        parts = [f"{csrf.cookie_name(runtime)}={CSRF_COOKIE}"]
        token = session if session is not None else (visitor.session(runtime) if visitor else None)
        if token:
            parts.append(f"{sessions.cookie_name(runtime)}={token}")
        return "; ".join(parts)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        cookie: str | None = None,
    ) -> httpx2.Response:
        client = self.world.client
        client.cookies.clear()
        all_headers = list(headers or [])
        if cookie is not None and not any(name == "cookie" for name, _ in all_headers):
            all_headers.append(("cookie", cookie.encode()))
        url = f"{path}?{query}" if query else path
        return client.request(
            method, url, content=body, headers=all_headers, follow_redirects=False
        )

    def send(
        self, where: str, kind: str, *, strict: bool, tolerated: bool | None = None, **request: Any
    ) -> None:
        response = self.request(**request)
        self.sent.append(
            Sent(
                where=where,
                kind=kind,
                strict=strict,
                tolerated=kind in TOLERATED if tolerated is None else tolerated,
                status=response.status_code,
                request_id=response.headers.get("x-request-id", ""),
                body=response.text[:20_000],
                location=response.headers.get("location", ""),
            )
        )


# Crawling: forms, and the query parameters the app's own links and redirects carry


@dataclass
class Form:
    action: str
    method: str
    multipart: bool
    fields: list[tuple[str, str]]
    files: list[str]
    visitor: Visitor


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "form":
            self.forms.append(
                {
                    "action": a.get("action", ""),
                    "method": a.get("method", "get").lower(),
                    "multipart": a.get("enctype") == "multipart/form-data",
                    "fields": [],
                    "files": [],
                }
            )
        elif self.forms and tag in ("input", "button", "textarea") and a.get("name"):
            if a.get("type") == "file":
                self.forms[-1]["files"].append(a["name"])
            elif tag != "button" or a.get("value"):
                value = "on" if a.get("type") == "checkbox" else a.get("value", "")
                self.forms[-1]["fields"].append((a["name"], value or "x"))
        elif self.forms and tag == "select" and a.get("name"):
            self._select = a["name"]
        elif tag == "option" and self._select is not None:
            self.forms[-1]["fields"].append((self._select, a.get("value", "")))
            self._select = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


@dataclass
class Crawl:
    forms: dict[tuple[str, str, tuple[str, ...]], Form] = field(default_factory=dict)
    query_names: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _internal(url: str) -> tuple[str, list[tuple[str, str]]] | None:
    parts = urlsplit(url)
    if parts.netloc and f"{parts.scheme}://{parts.netloc}" != ISSUER:
        return None
    if not parts.path.startswith("/"):
        return None
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


def crawl(fuzzer: Fuzzer, start: list[str]) -> Crawl:
    found = Crawl()
    runtime = fuzzer.world.runtime
    for visitor in fuzzer.world.visitors:
        cookie = fuzzer.cookies(visitor)
        queue, seen = list(start), set()
        while queue and len(seen) < 200:
            url = queue.pop(0)
            if url in seen:
                continue
            seen.add(url)
            response = fuzzer.request("GET", url, cookie=cookie)
            assert response.status_code < 500, (visitor.name, url, response.status_code)
            targets = []
            if response.status_code in (301, 302, 303, 307, 308):
                targets.append(response.headers["location"])
            elif response.headers.get("content-type", "").startswith("text/html"):
                page = _Page()
                page.feed(response.text)
                targets += page.links
                for form in page.forms:
                    action = _internal(form["action"] or url)
                    if action is None:
                        continue
                    path, query = action
                    for name, _ in query:
                        found.query_names[path].add(name)
                    key = (path, form["method"], tuple(sorted(n for n, _ in form["fields"])))
                    found.forms.setdefault(
                        key,
                        Form(
                            path,
                            form["method"],
                            form["multipart"],
                            form["fields"],
                            form["files"],
                            visitor,
                        ),
                    )
            for target in targets:
                internal = _internal(target)
                if internal is None:
                    continue
                path, query = internal
                for name, _ in query:
                    found.query_names[path].add(name)
                if not path.startswith("/static/"):
                    queue.append(f"{path}?{_urlencode(query)}" if query else path)
    del runtime
    return found


# The protocols' own parameters (their specifications), for the endpoints discovery names


AUTHORIZATION_PARAMETERS = [
    # RFC 6749 §4.1.1, RFC 7636 §4.3, OpenID Connect Core §3.1.2.1, OAuth 2.0 Multiple
    # Response Types §2.1, RFC 9126/9101 (refused), SMART App Launch (launch, aud).
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "response_mode",
    "login_hint",
    "id_token_hint",
    "ui_locales",
    "claims",
    "display",
    "acr_values",
    "request",
    "request_uri",
    "launch",
    "aud",
]
GRANT_PARAMETERS = {
    "authorization_code": ["code", "redirect_uri", "code_verifier"],  # RFC 6749 §4.1.3
    "refresh_token": ["refresh_token", "scope"],  # RFC 6749 §6
    "client_credentials": ["scope"],  # RFC 6749 §4.4.2
}
TOKEN_PARAMETERS = ["token", "token_type_hint"]  # RFC 7009 §2.1, RFC 7662 §2.1
END_SESSION_PARAMETERS = [
    # OpenID Connect RP-Initiated Logout 1.0 §2
    "id_token_hint",
    "logout_hint",
    "client_id",
    "post_logout_redirect_uri",
    "state",
    "ui_locales",
]
USERINFO_PARAMETERS = ["access_token"]  # RFC 6750 §2.2, §2.3
# An authorization response (RFC 6749 §4.1.2, §4.1.2.1; RFC 9207), at the demo app's
# redirect URI.
AUTHORIZATION_RESPONSE_PARAMETERS = [
    "code",
    "state",
    "iss",
    "error",
    "error_description",
    "error_uri",
]
# Twilio's webhook parameters (Messaging: incoming message and status callback; Voice:
# call status, answering machine detection), as Twilio documents them.
TWILIO_PARAMETERS = [
    "AccountSid",
    "MessageSid",
    "SmsSid",
    "MessagingServiceSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "NumSegments",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "ErrorMessage",
    "CallSid",
    "CallStatus",
    "AnsweredBy",
    "MachineDetectionDuration",
    "Direction",
    "ApiVersion",
    "OptOutType",
]


def _assertion(world: World) -> str:
    from joserfc import jwt  # noqa: PLC0415

    registered = world.extra_clients["private_key_jwt"]
    now = int(time.time())
    claims = {
        "iss": registered.client_id,
        "sub": registered.client_id,
        "aud": f"{ISSUER}/oauth2/token",
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode({"alg": "ES256", "kid": "k1"}, claims, world.signing_key)


def _client_authentication(world: World, method: str) -> tuple[list[tuple[str, str]], str]:
    """The form parameters and the Basic header value for ``method`` (RFC 6749 §2.3,
    RFC 7523 §2.2)."""
    config = world.config
    if method == "client_secret_basic":
        raw = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
        return [], base64.b64encode(raw.encode()).decode()
    if method == "client_secret_post":
        registered = world.extra_clients[method]
        return [("client_id", registered.client_id), ("client_secret", registered.secret or "")], ""
    if method == "private_key_jwt":
        return [
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", _assertion(world)),
        ], ""
    assert method == "none", f"discovery names an authentication method the fuzz lacks: {method}"
    return [("client_id", world.extra_clients["none"].client_id)], ""


# The pass


def _fill(path: str, values: dict[str, str]) -> str:
    return "/".join(
        values.get(part[1:-1].split(":")[0], "x") if part.startswith("{") else part
        for part in path.split("/")
    )


def _with_param(path: str, name: str, value: str, values: dict[str, str]) -> str:
    return _fill(path, {**values, name: quote(_bytes(value), safe="")})


def _header_cases(fuzzer: Fuzzer, kind: str) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Headers the app parses, crafted: Basic credentials (raw and form-encoded), a
    Bearer token, the session and CSRF cookies, a quoted cookie escape, and any header."""
    runtime = fuzzer.world.runtime
    value = _crafted(kind)
    # As clients send them: UTF-8 (a lone surrogate as its bytes); a C1 control as its
    # one byte (in UTF-8, a continuation byte on its own).
    raw = value.encode("latin-1") if kind == "c1" else _bytes(value)
    b64 = base64.b64encode
    return [
        ("authorization basic", [("authorization", b"Basic " + b64(_bytes(value) + b":s"))]),
        (
            "authorization basic form-encoded",
            [("authorization", b"Basic " + b64(quote_plus(_bytes(value)).encode() + b":s"))],
        ),
        ("authorization bearer", [("authorization", b"Bearer " + raw)]),
        ("session cookie", [("cookie", f"{sessions.cookie_name(runtime)}=".encode() + raw)]),
        ("csrf cookie", [("cookie", f"{csrf.cookie_name(runtime)}=".encode() + raw)]),
        ("user-agent", [("user-agent", raw)]),
        ("any header", [("x-anything", raw)]),
    ]


def _cookie_escapes(fuzzer: Fuzzer) -> list[tuple[str, list[tuple[str, bytes]]]]:
    # A quoted cookie value's octal escape decodes to a NUL (Python's cookie unquoting):
    # in the app's session cookie (treated as absent), in another site's (not read).
    name = sessions.cookie_name(fuzzer.world.runtime)
    escaped = f'"{MARK}\\000{MARK}"'
    return [
        ("session cookie escape", [("cookie", f"{name}={escaped}".encode())]),
        ("foreign cookie escape", [("cookie", f"_ga={escaped}; pref=€".encode())]),
    ]


def _multipart(fields: list[tuple[str, str]], files: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """A multipart/form-data body, written out: the values as the bytes an attacker
    sends (a library would refuse to encode a lone surrogate)."""
    boundary = b"fuzz-boundary-7f3a9c"
    body = b""
    for name, value in fields:
        body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="'
        body += _bytes(name) + b'"\r\n\r\n' + _bytes(value) + b"\r\n"
    for name, filename in files:
        body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + _bytes(name)
        body += b'"; filename="' + _bytes(filename) + b'"\r\n'
        body += b"Content-Type: text/plain\r\n\r\nhello\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, b"multipart/form-data; boundary=" + boundary


def _json_example(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _json_example(components[schema["$ref"].rsplit("/", 1)[1]], components)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return _json_example(options[0], components)
    if "examples" in schema:
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {
            name: _json_example(sub, components)
            for name, sub in schema.get("properties", {}).items()
        }
    return {"integer": 1, "number": 1, "boolean": False, "array": []}.get(str(kind), "x")


def _string_fields(example: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(example, dict):
        for name, value in example.items():
            yield from _string_fields(value, (*prefix, name))
    elif prefix:
        yield prefix  # every field, whatever its type: a string where a number goes too


def _replaced(example: Any, path: tuple[str, ...], value: str) -> Any:
    copy = json.loads(json.dumps(example))
    target = copy
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return copy


def _json_body(data: Any) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, as an attacker's client would send it.
    return json.dumps(data).encode()


def _started_sign_in(fuzzer: Fuzzer) -> tuple[dict[str, str], str]:
    """The demo provider app's sign-in, started: the authorization request it sends the
    browser to (its query), and the app's cookie holding the sign-in's state."""
    login = fuzzer.request("GET", f"{seed.PROVIDER_PATH}/login", cookie=fuzzer.cookies(None))
    query = dict(parse_qsl(urlsplit(login.headers["location"]).query))
    return query, f"{provider_app.COOKIE}={login.cookies[provider_app.COOKIE]}"


def _session_that_gets_in(fuzzer: Fuzzer, method: str, path: str, example: Any) -> str:
    """A fresh session token of the first signed-in visitor the operation lets in with
    its example body; the last one's if none does."""
    runtime = fuzzer.world.runtime
    token = ""
    for visitor in fuzzer.world.visitors:
        if visitor.account_id is None:
            continue
        token = visitor.session(runtime) or ""
        headers = [("authorization", f"Bearer {token}".encode())]
        body = None
        if example is not None:
            body = _json_body(example)
            headers.append(("content-type", b"application/json"))
        probe = fuzzer.request(method, path, body=body, headers=headers)
        if probe.status_code not in (401, 403, 409):
            return visitor.session(runtime) or ""
    return token


def run_pass(fuzzer: Fuzzer) -> None:  # noqa: PLR0912  (one pass, read top down)
    world = fuzzer.world
    client = world.client
    runtime = world.runtime
    document = client.get("/api/openapi.json").json()
    components = document["components"]["schemas"]
    discovery = client.get("/.well-known/openid-configuration").json()
    routes = list(routing.flatten(client.app.routes))  # type: ignore[attr-defined]

    # Where the crawl starts: every page without parameters, the pages of the test's
    # thread, and what the demo provider app's sign-in sends the browser to.
    start = [
        _fill(route.path, world.path_values)
        for route in routes
        if isinstance(route, Route) and "GET" in (route.methods or ())
    ]
    found = crawl(fuzzer, start)
    authorize_path = urlsplit(discovery["authorization_endpoint"]).path
    assert found.forms, "the crawl found no forms"
    assert authorize_path in found.query_names, "the crawl never reached the consent page"

    callback_path = f"{seed.PROVIDER_PATH}/callback"
    protocol_queries: dict[str, list[str]] = {
        urlsplit(discovery["authorization_endpoint"]).path: AUTHORIZATION_PARAMETERS,
        urlsplit(discovery["end_session_endpoint"]).path: END_SESSION_PARAMETERS,
        urlsplit(discovery["userinfo_endpoint"]).path: USERINFO_PARAMETERS,
        callback_path: AUTHORIZATION_RESPONSE_PARAMETERS,
    }
    every_query_name = sorted(
        {n for names in found.query_names.values() for n in names}
        | {n for names in protocol_queries.values() for n in names}
    )

    client_endpoints = {
        urlsplit(discovery[name]).path
        for name in ("token_endpoint", "revocation_endpoint", "introspection_endpoint")
    }

    # A valid authorization request to start from: the demo app's sign-in redirect.
    authorize_query, _ = _started_sign_in(fuzzer)

    for route in routes:
        if isinstance(route, Mount):
            for kind in KINDS:
                path = f"{route.path}/{quote(_bytes(_crafted(kind)), safe='')}"
                fuzzer.send(
                    f"GET {route.path}/{{path}}",
                    kind,
                    strict=kind in STRICT,
                    method="GET",
                    path=path,
                    cookie=fuzzer.cookies(None),
                )
            continue
        assert isinstance(route, Route)
        params = list(route.param_convertors)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            label = f"{method} {route.path}"
            cookie = fuzzer.cookies(world.patient)
            baseline = authorize_query if route.path == authorize_path else {}
            if route.path == callback_path:
                # A sign-in under way, so that its state is compared and a code exchanged.
                started, demo_cookie = _started_sign_in(fuzzer)
                cookie = f"{cookie}; {demo_cookie}"
                baseline = {"code": "x", "state": started["state"], "iss": ISSUER}
            base = _fill(route.path, world.path_values)
            operation = document["paths"].get(route.path, {}).get(method.lower(), {})
            content = operation.get("requestBody", {}).get("content", {})
            example = None
            if "application/json" in content:
                example = _json_example(content["application/json"]["schema"], components)
            bearer: list[tuple[str, bytes]] = []
            for requirement in operation.get("security", []):
                for scheme, scopes in requirement.items():
                    if scheme == "session":
                        # Whose session gets in: the app says (an API step for a signed-in
                        # account at one stage answers 401, 403 or 409 at another).
                        token = _session_that_gets_in(fuzzer, method, base, example)
                    else:
                        token = world.tokens[scopes[0]]
                    bearer = [("authorization", f"Bearer {token}".encode())]
            for kind in KINDS:
                strict = kind in STRICT
                quick = kind in QUICK  # enough for the checks that do not depend on the route
                # Path parameters.
                for name in params:
                    path = _with_param(route.path, name, _crafted(kind), world.path_values)
                    fuzzer.send(
                        f"{label} path {name}",
                        kind,
                        strict=strict,
                        method=method,
                        path=path,
                        headers=bearer,
                        cookie=cookie,
                    )
                # Query parameters: the route's own, and every name seen anywhere at once.
                names = set(found.query_names.get(route.path, ()))
                names |= {"anything"} if quick else set()
                names |= set(protocol_queries.get(route.path, ()))
                names |= {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
                for name in sorted(names):
                    pairs = [
                        *((k, v) for k, v in baseline.items() if k != name),
                        (name, _crafted(kind)),
                    ]
                    fuzzer.send(
                        f"{label} query {name}",
                        kind,
                        strict=strict,
                        method=method,
                        path=base,
                        query=_urlencode(pairs),
                        headers=bearer,
                        cookie=cookie,
                    )
                if kind not in LONG:  # all of them, long, would be over any URL's limit
                    everything = [(name, _crafted(kind)) for name in every_query_name]
                    fuzzer.send(
                        f"{label} query (all names)",
                        kind,
                        strict=strict,
                        method=method,
                        path=base,
                        query=_urlencode(everything),
                        headers=bearer,
                        cookie=cookie,
                    )
                if not quick:
                    continue
                bad_name = [(_crafted(kind), "x")]
                fuzzer.send(
                    f"{label} query name",
                    kind,
                    strict=strict,
                    method=method,
                    path=base,
                    query=_urlencode(bad_name),
                    headers=bearer,
                    cookie=cookie,
                )
            # Headers: every header's bytes are checked for controls; Basic credentials
            # are decoded (and so checked as text) only where clients authenticate, which
            # get every kind; a cookie of the app's that is not text is absent.
            for kind in KINDS if route.path in client_endpoints else QUICK:
                for header, headers in _header_cases(fuzzer, kind):
                    if header.startswith("authorization basic"):
                        decoded = route.path in client_endpoints
                        strict = decoded and kind in {*STRICT, "newline", "surrogate"}
                        tolerated = not decoded or kind in TOLERATED
                    else:
                        strict = kind in HEADER_CONTROLS
                        tolerated = not strict
                    fuzzer.send(
                        f"{label} header {header}",
                        kind,
                        strict=strict,
                        tolerated=tolerated,
                        method=method,
                        path=base,
                        headers=headers,
                    )
            for header, headers in _cookie_escapes(fuzzer):
                fuzzer.send(
                    f"{label} {header}",
                    "nul",
                    strict=False,
                    tolerated=True,
                    method=method,
                    path=base,
                    headers=headers,
                )

            # JSON bodies, from the OpenAPI document.
            if example is not None:
                for field_path in _string_fields(example):
                    for kind in KINDS:
                        body = _json_body(_replaced(example, field_path, _crafted(kind)))
                        fuzzer.send(
                            f"{label} json {'.'.join(field_path)}",
                            kind,
                            strict=kind in STRICT or kind == "surrogate",
                            method=method,
                            path=base,
                            body=body,
                            cookie=cookie,
                            headers=[*bearer, ("content-type", b"application/json")],
                        )
            for media in ("text/csv", "application/octet-stream"):
                if media in content:
                    for kind in KINDS:
                        value = _crafted(kind)
                        body = _bytes(f"a,b\n{value},{value}\n")
                        fuzzer.send(
                            f"{label} file",
                            kind,
                            strict=False,
                            method=method,
                            path=base,
                            body=body,
                            cookie=cookie,
                            headers=[*bearer, ("content-type", media.encode())],
                        )

    # Forms, as rendered, each field crafted in turn, as the visitor who was shown it.
    token = runtime.keyring.lookup_hash("csrf", CSRF_COOKIE)
    for form in found.forms.values():
        label = f"{form.method.upper()} {form.action} form"
        fields = [(n, token if n == "csrf_token" else v) for n, v in form.fields]
        for index, (name, _) in enumerate(fields):
            for kind in KINDS:
                crafted = [*fields[:index], (name, _crafted(kind)), *fields[index + 1 :]]
                cookie = fuzzer.cookies(form.visitor)
                strict = kind in STRICT and name != "csrf_token"
                if form.method == "get":
                    fuzzer.send(
                        f"{label} {name}",
                        kind,
                        strict=strict,
                        method="GET",
                        path=form.action,
                        query=_urlencode(crafted),
                        cookie=cookie,
                    )
                    continue
                if form.multipart:
                    body, media = _multipart(crafted, [(f, "a.txt") for f in form.files])
                else:
                    body, media = _urlencode(crafted).encode(), b"application/x-www-form-urlencoded"
                fuzzer.send(
                    f"{label} {name}",
                    kind,
                    strict=strict,
                    method="POST",
                    path=form.action,
                    body=body,
                    cookie=cookie,
                    headers=[("content-type", media)],
                )
        for name in form.files:
            for kind in KINDS:
                body, media = _multipart(fields, [(name, _crafted(kind))])
                fuzzer.send(
                    f"{label} {name} (file name)",
                    kind,
                    strict=kind in STRICT,
                    method="POST",
                    path=form.action,
                    body=body,
                    cookie=fuzzer.cookies(form.visitor),
                    headers=[("content-type", media)],
                )

    # The client-authenticated endpoints, with each grant and authentication advertised.
    form_type = [("content-type", b"application/x-www-form-urlencoded")]
    endpoints = [
        (
            discovery["token_endpoint"],
            discovery["token_endpoint_auth_methods_supported"],
            {
                grant: ["grant_type", *GRANT_PARAMETERS[grant]]
                for grant in discovery["grant_types_supported"]
            },
        ),
        (
            discovery["revocation_endpoint"],
            discovery["revocation_endpoint_auth_methods_supported"],
            {"": TOKEN_PARAMETERS},
        ),
        (
            discovery["introspection_endpoint"],
            discovery["introspection_endpoint_auth_methods_supported"],
            {"": TOKEN_PARAMETERS},
        ),
    ]
    for url, methods, grants in endpoints:
        path = urlsplit(url).path
        for grant, names in grants.items():
            for method in methods:
                auth_pairs, basic = _client_authentication(world, method)
                valid = [("grant_type", grant)] if grant else []
                valid += [(n, "x") for n in names if n != "grant_type"]
                for name in [*names, *(n for n, _ in auth_pairs)]:
                    for kind in KINDS:
                        pairs = [
                            *((n, v) for n, v in [*valid, *auth_pairs] if n != name),
                            (name, _crafted(kind)),
                        ]
                        headers = list(form_type)
                        if basic:
                            headers.append(("authorization", f"Basic {basic}".encode()))
                        fuzzer.send(
                            f"POST {path} {grant} {method} {name}",
                            kind,
                            strict=kind in STRICT,
                            method="POST",
                            path=path,
                            body=_urlencode(pairs).encode(),
                            headers=headers,
                        )

    # Twilio's webhooks, signed as Twilio signs them.
    validator = RequestValidator(TWILIO_TOKEN)
    for route in routes:
        if not (isinstance(route, Route) and route.path.startswith("/api/twilio/")):
            continue
        path = _fill(route.path, {"attempt_id": "at" + "0" * 32})
        for name in TWILIO_PARAMETERS:
            for kind in KINDS:
                params = dict.fromkeys(TWILIO_PARAMETERS, "x") | {name: _crafted(kind)}
                if kind == "surrogate":
                    continue  # not encodable as the UTF-8 Twilio signs
                signature = validator.compute_signature(f"{ISSUER}{path}", params)
                fuzzer.send(
                    f"POST {route.path} {name}",
                    kind,
                    # An SMS's text is read past the boundary, what is not text as spaces
                    # (sms/webhooks.py: a 400 would lose the message).
                    strict=kind in STRICT and name != "Body",
                    method="POST",
                    path=path,
                    body=_urlencode(list(params.items())).encode(),
                    headers=[*form_type, ("x-twilio-signature", signature.encode())],
                )


def _text(record: dict[str, Any]) -> str:
    return "\n".join(str(value) for value in record.values())


@pytest.mark.timeout(300)  # about a minute on two cores; more when they are shared
def test_fuzz_every_parameter_of_every_endpoint_on_postgresql(world: World) -> None:
    fuzzer = Fuzzer(world)
    started = time.monotonic()
    with captured_log() as log:
        run_pass(fuzzer)
    elapsed = time.monotonic() - started
    # One record a line; not splitlines(), which also splits at U+0085 and U+2028.
    records = [json.loads(line) for line in log.getvalue().split("\n") if line]

    server_errors = [f"{s.where} [{s.kind}]: {s.status}" for s in fuzzer.sent if s.status >= 500]
    assert not server_errors, "\n".join(server_errors[:50])
    not_refused = sorted(
        {
            f"{s.where} [{s.kind}]: {s.status} {s.location}"
            for s in fuzzer.sent
            if s.strict and s.status != 400
        }
    )
    assert not not_refused, "\n".join(not_refused[:150])
    refused_ids = {r.get("request_id") for r in records if r.get("refused")}
    wrongly_refused = sorted(
        {
            f"{s.where} [{s.kind}]: {s.status}"
            for s in fuzzer.sent
            if s.tolerated and (s.request_id in refused_ids or REFUSED_INPUT in s.body)
        }
    )
    assert not wrongly_refused, "\n".join(wrongly_refused[:150])
    errors = [r for r in records if r["level"] in ("error", "critical") or "exc" in r]
    assert not errors, errors[:5]
    assert "Traceback" not in log.getvalue()
    # A refused request's log holds none of its values; no record anywhere holds a
    # character the boundary refuses.
    refused = {s.request_id for s in fuzzer.sent if s.strict}  # every one a 400 (above)
    leaked = [r for r in records if r.get("request_id") in refused and MARK in _text(r)]
    assert not leaked, [json.dumps(r)[:300] for r in leaked[:8]]
    controls = [r for r in records if any(CRAFTED[k] in _text(r) for k in STRICT)]
    assert not controls, [json.dumps(r)[:300] for r in controls[:8]]
    # Nor a refusal's answer (the value is never repeated back).
    echoed = [f"{s.where} [{s.kind}]" for s in fuzzer.sent if s.strict and MARK in s.body]
    assert not echoed, echoed[:20]
    statuses = sorted({s.status for s in fuzzer.sent})
    print(f"fuzz pass: {len(fuzzer.sent)} requests in {elapsed:.1f} s, answers {statuses}")
