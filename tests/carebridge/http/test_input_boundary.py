"""The input boundary (carebridge.http.boundary, issue 17 finding 4): control characters
and lone surrogates are refused with a 400 wherever a request carries text (path, query,
headers, cookies, forms, JSON), in the shape the path speaks; the log of a refused
request holds none of its values; a value the database still refuses deep down is a
400, its value and the statement's parameters kept out of the log."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.http import boundary, csrf
from carebridge.runtime import Runtime
from identity import sessions
from identity.models import AuthSession
from tests.identity import factories, verification_mail
from tests.logcapture import captured_log

MARK = "crafted3x"


def _records(log: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().split("\n") if line]


def _clean(log: Any) -> None:
    assert MARK not in log.getvalue()
    assert "Traceback" not in log.getvalue()


def test_exactly_the_control_characters_and_lone_surrogates_are_refused() -> None:
    controls = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000)}
    for code in [*range(0x0000, 0x3000), *range(0xD700, 0xE100), 0xFFFD, 0x10FFFF]:
        character = chr(code)
        for value in (character, f"text {character}", f"tëxt {character}"):
            assert boundary.is_text(value) is (code not in controls), hex(code)
            line_break = code in (0x09, 0x0A, 0x0D)
            assert boundary.is_text(value, multiline=True) is (
                code not in controls or line_break
            ), hex(code)


# Before routing: path, query, headers, cookies


def test_nul_in_a_path_parameter_is_400_and_the_path_is_not_logged(client: TestClient) -> None:
    with captured_log() as log:
        response = client.get(f"/messages/th_{MARK}%00", follow_redirects=False)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")  # a page, for people
    assert MARK not in response.text
    _clean(log)
    [access] = [r for r in _records(log) if r["logger"] == "carebridge.access"]
    assert access["refused"] == "path" and access["path"] is None and access["status"] == 400


@pytest.mark.parametrize("value", ["%00", "%1B%5B2J", "%7F", "%C2%85", "%0A"])
def test_control_characters_in_a_query_are_a_problem_on_api_paths(
    client: TestClient, value: str
) -> None:
    with captured_log() as log:
        response = client.get(f"/api/v1/messaging/threads?cursor={MARK}{value}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 400 and MARK not in response.text
    _clean(log)
    [access] = [r for r in _records(log) if r["logger"] == "carebridge.access"]
    assert access["refused"] == "query"


def test_a_control_character_in_a_query_parameter_name_is_refused(client: TestClient) -> None:
    response = client.get(f"/signin?{MARK}%00=1")
    assert response.status_code == 400


@pytest.mark.parametrize("value", [b"\x00", b"\x08", b"\x1b[2J", b"\x1f", b"\x7f", b"a\nb"])
def test_control_characters_in_a_header_are_refused(client: TestClient, value: bytes) -> None:
    response = client.get("/signin", headers=[("user-agent", MARK.encode() + value)])
    assert response.status_code == 400


def test_a_tab_and_printable_non_ascii_are_text(client: TestClient) -> None:
    assert client.get("/signin", headers=[("user-agent", b"Browser\t1.0 \xe9")]).status_code == 200
    assert client.get(f"/signin?next={quote('/account?é=Ω😀')}").status_code == 200


SESSION_COOKIE_KEEPS_WORKING = "/mfa/enroll"  # a level-one session's page


def _session_cookie(runtime: Runtime, token: str) -> tuple[str, bytes]:
    return ("cookie", f"{sessions.cookie_name(runtime)}={token}".encode())


# Header values arrive as bytes, read as Latin-1: the bytes 0x80 to 0x9F there are UTF-8
# continuation bytes (U+2019, a right quote, is E2 80 99), not C1 controls.
UTF8_USER_AGENTS = [
    "Zoë\u2019s iPhone",
    "Über Browser/2.0",
    "微信 WeChat/8.0",
    "Phone 📱 ٣",
    "עברית",
]


@pytest.mark.parametrize("agent", UTF8_USER_AGENTS)
def test_utf8_user_agent_is_not_refused(client: TestClient, runtime: Runtime, agent: str) -> None:
    headers = [("user-agent", agent.encode())]
    assert client.get("/signin", headers=headers).status_code == 200
    # Signing up with it stores it with the session (the sessions list shows it).
    body = {"login": "zoe@example.org", "password": "quiet harbour lamp"}
    token = verification_mail.signed_up(client, body["login"], body["password"], headers)
    with runtime.sessions() as db:
        stored = db.get(AuthSession, runtime.keyring.lookup_hash("session", token))
    assert stored is not None and stored.user_agent
    page = client.get(
        SESSION_COOKIE_KEEPS_WORKING, headers=[*headers, _session_cookie(runtime, token)]
    )
    assert page.status_code == 200


# Cookies: only those the app reads are looked at (carebridge.http.cookies), and one
# holding what is not text is treated as absent; another site's cookies are not ours.


@pytest.mark.parametrize(
    "foreign",
    [b'_ga="\\000"', b"pref=\xe2\x82\xac", b'_x="\\205\\n"', b"theme=\x85\x9f", b'="\\000"'],
)
def test_a_foreign_cookie_with_a_nul_does_not_lock_the_site(
    client: TestClient, runtime: Runtime, foreign: bytes
) -> None:
    # A sibling subdomain can set any cookie on the parent domain, for as long as it
    # likes: the __Host- prefix keeps it from setting ours, not from adding its own.
    assert client.get("/signin", headers=[("cookie", foreign)]).status_code == 200
    token = factories.session(runtime, factories.account(runtime))
    mine = f"{sessions.cookie_name(runtime)}={token}".encode()
    for header in (foreign + b"; " + mine, mine + b"; " + foreign):
        page = client.get(SESSION_COOKIE_KEEPS_WORKING, headers=[("cookie", header)])
        assert page.status_code == 200, header  # still signed in


@pytest.mark.parametrize(
    "corrupted", [f'"{MARK}\\000"', f'"{MARK}\\205"', f'"{MARK}\\011"', f"{MARK}\x85"]
)
def test_a_corrupted_session_cookie_is_treated_as_signed_out(
    client: TestClient, runtime: Runtime, corrupted: str
) -> None:
    name = sessions.cookie_name(runtime)
    header = f"{name}={corrupted}".encode("latin-1")
    with captured_log() as log:
        response = client.get("/account", headers=[("cookie", header)], follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=")
    _clean(log)
    # Beside a good one (a stale one from another path, say), the good one is used.
    token = factories.session(runtime, factories.account(runtime))
    good = f"{name}={token}".encode()
    for both in (good + b"; " + header, header + b"; " + good):
        page = client.get(SESSION_COOKIE_KEEPS_WORKING, headers=[("cookie", both)])
        assert page.status_code == 200


def test_a_corrupted_csrf_cookie_is_replaced_and_forms_still_work(
    client: TestClient, runtime: Runtime
) -> None:
    name = csrf.cookie_name(runtime)
    client.cookies.set(name, f'"{"c" * 40}\\000"', domain="testserver.local")
    page = client.get("/signin")
    assert page.status_code == 200
    fresh = page.cookies.get(name)
    assert fresh and boundary.is_text(fresh)  # a new one, replacing it
    token = factories.csrf(page.text)
    answer = client.post(
        "/signin",
        data={"csrf_token": token, "login": "nobody@example.org", "password": "p" * 12},
        follow_redirects=False,
    )
    assert answer.status_code != 403  # the form's token matches the cookie now sent


@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/userinfo"])
def test_oauth_endpoints_answer_a_refusal_as_an_oauth_error(client: TestClient, path: str) -> None:
    response = client.post(f"{path}?x={MARK}%00", data={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


# Bodies: forms and JSON


def _signin_page(client: TestClient) -> str:
    page = client.get("/signin")
    start = page.text.index('name="csrf_token" value="') + len('name="csrf_token" value="')
    return page.text[start : page.text.index('"', start)]


@pytest.mark.parametrize("value", ["\x00", "\x1b", "\x85", "\n", "\r", "\t"])
def test_a_single_line_form_field_refuses_control_characters_and_line_breaks(
    client: TestClient, value: str
) -> None:
    token = _signin_page(client)
    with captured_log() as log:
        response = client.post(
            "/signin",
            data={"csrf_token": token, "login": f"{MARK}{value}@example.org", "password": "p" * 12},
            follow_redirects=False,
        )
    assert response.status_code == 400
    assert MARK not in response.text
    _clean(log)


@pytest.mark.parametrize("value", ["\\u0000", "\\u001b", "\\u0085", "\\u000a", "\\ud800"])
@pytest.mark.parametrize("field", ["login", "password"])
def test_control_characters_in_json_are_refused_before_validation(
    client: TestClient, value: str, field: str
) -> None:
    body = {"login": "someone@example.org", "password": "a password long enough"}
    body[field] = f"{MARK}VALUE"
    raw = json.dumps(body).replace("VALUE", value)
    with captured_log() as log:
        response = client.post(
            "/api/v1/signin", content=raw, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert MARK not in response.text
    _clean(log)


# Deep down: what the database itself refuses


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_value_the_database_refuses_is_400_without_the_value_in_the_log(
    runtime: Runtime,
) -> None:
    # A handler that lets a value through to a statement the database refuses (SQLSTATE
    # 22P02, whose message quotes the value): the boundary's safety net.
    async def lets_it_through(request: Request) -> Response:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT CAST(:v AS integer)"), {"v": f"{MARK}-123"})
        return Response("unreachable")

    app = create_app(runtime)
    app.router.routes.append(Route("/api/v1/lets-it-through", lets_it_through))
    with TestClient(app, raise_server_exceptions=False) as client, captured_log() as log:
        response = client.get("/api/v1/lets-it-through")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    _clean(log)
    [record] = [r for r in _records(log) if r["level"] == "error"]
    assert record["error"] == "InvalidTextRepresentation" and record["sqlstate"] == "22P02"
    assert "lets_it_through" in record["where"]  # where, for whoever fixes it


def test_a_failed_statement_does_not_carry_its_parameters(runtime: Runtime) -> None:
    with pytest.raises(DBAPIError) as raised, runtime.engine.connect() as connection:
        connection.execute(text("SELECT x FROM no_such_table WHERE y = :v"), {"v": MARK})
    assert MARK not in str(raised.value)


def test_only_the_apps_own_cookies_that_are_not_text_are_dropped() -> None:
    ours = frozenset({"carebridge_session", "carebridge_csrf"})
    header = b'_ga="\\000"; carebridge_session="a\\000"; pref=\xe2\x82\xac; carebridge_csrf=ok'
    kept = boundary.without_bad_cookies(header, ours)
    assert kept == b'_ga="\\000"; pref=\xe2\x82\xac; carebridge_csrf=ok'  # the rest as sent
    plain = b"carebridge_session=abc; _ga=GA1.1"
    assert boundary.without_bad_cookies(plain, ours) is plain
