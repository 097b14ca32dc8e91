"""The demo provider app, driven over HTTP: a clinician signs in through OpenID Connect
(authorization code + PKCE, consent) and messages a demo patient through the API.

The app's own HTTP calls to carebridge go back into the same application in-process
(``app.state.demo_transport``), exactly the requests a networked app would send.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.db import transaction
from carebridge.demo import seed
from carebridge.demo.seed import DemoConfig
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts, sessions
from messaging import threads
from messaging.access import Actor
from messaging.interfaces import add_topic, configure, operator_start
from sms.models import Notification
from tests.identity.factories import account, csrf, session, totp
from tests.logcapture import captured_log

ISSUER = "http://127.0.0.1:8000"
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@pytest.fixture
def demo(tmp_path: Path, database_url: str) -> Iterator[tuple[Runtime, TestClient, DemoConfig]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        issuer=ISSUER,
        demo=True,
    )
    runtime = Runtime.build(settings)
    config = seed.seed(runtime)
    app = create_app(runtime)
    app.state.demo_transport = httpx2.ASGITransport(app=app)
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        yield runtime, client, config
    runtime.close()


def _clinician_signed_in(runtime: Runtime, client: TestClient) -> None:
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, seed.CLINICIAN_LOGIN)
    assert found is not None
    totp(runtime, found.account_id)
    _use_session(client, runtime, found.account_id)


def _use_session(client: TestClient, runtime: Runtime, account_id: str) -> None:
    token = session(runtime, account_id, level=sessions.SECOND_FACTOR)
    client.cookies.set(sessions.cookie_name(runtime), token)


def _consent(client: TestClient, page: httpx2.Response) -> httpx2.Response:
    fields = [(name, html.unescape(value)) for name, value in _HIDDEN.findall(page.text)]
    fields = [(name, value) for name, value in fields if name != "csrf_token"]
    data = {**dict(fields), "csrf_token": csrf(page.text), "decision": "allow"}
    return client.post("/authorize", data=data, follow_redirects=False)


def _sign_in_to_the_app(client: TestClient) -> None:
    start = client.get("/demo/provider/login", follow_redirects=False)
    assert start.status_code == 303
    authorize = urlsplit(start.headers["location"])
    query = parse_qs(authorize.query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    page = client.get(f"{authorize.path}?{authorize.query}", follow_redirects=False)
    answer = _consent(client, page) if page.status_code == 200 else page
    assert answer.status_code in (302, 303), answer.text
    back = urlsplit(answer.headers["location"])
    assert back.path == "/demo/provider/callback"
    assert parse_qs(back.query)["iss"] == [ISSUER]
    done = client.get(f"{back.path}?{back.query}", follow_redirects=False)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/demo/provider/"


def test_a_clinician_signs_in_and_messages_a_demo_patient(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, config = demo
    assert "Sign in with carebridge" in client.get("/demo/provider/").text
    _clinician_signed_in(runtime, client)
    _sign_in_to_the_app(client)

    home = client.get("/demo/provider/")
    assert home.status_code == 200 and "No threads yet" in home.text
    patient = config.patients[0]
    sent = client.post(
        "/demo/provider/threads",
        data={
            "csrf_token": csrf(home.text),
            "patient_id": patient.patient_id,
            "subject": "Your lab results <b>",
            "body": "Please call us about the results <script>alert(1)</script>",
        },
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    thread_page = client.get(sent.headers["location"])
    assert "Please call us about the results &lt;script&gt;" in thread_page.text
    assert "<script>alert(1)</script>" not in thread_page.text
    with runtime.sessions() as db:
        kinds = db.execute(
            select(Notification.kind).where(Notification.patient_id == patient.patient_id)
        ).scalars()
        assert list(kinds) == ["new_message"]


def test_a_patient_signed_in_to_the_app_sees_no_care_team_threads(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, _ = demo
    someone = account(runtime)
    totp(runtime, someone)
    _use_session(client, runtime, someone)
    _sign_in_to_the_app(client)
    page = client.get("/demo/provider/")
    # Not staff of the demo team: the API refuses the token, the app says why.
    assert page.status_code in (403, 404), page.text
    assert "Care team threads" not in page.text


def test_a_forged_callback_signs_no_one_in(demo: tuple[Runtime, TestClient, DemoConfig]) -> None:
    _, client, _ = demo
    client.get("/demo/provider/login", follow_redirects=False)
    answer = client.get("/demo/provider/callback?code=x&state=forged&iss=http://127.0.0.1:8000")
    assert answer.status_code == 400
    assert "does not belong to this sign-in" in answer.text
    assert "Sign in with carebridge" in client.get("/demo/provider/").text


@pytest.mark.parametrize("state", ["é²µ Zoë", "שלום", "😀", "٣"])
def test_a_non_ascii_state_is_refused_as_a_forged_callback_not_a_500(
    demo: tuple[Runtime, TestClient, DemoConfig], state: str
) -> None:
    # secrets.compare_digest refuses str holding non-ASCII (TypeError): the comparison is
    # of bytes, so a crafted state is the same refusal as any other wrong one.
    _, client, _ = demo
    client.get("/demo/provider/login", follow_redirects=False)
    answer = client.get(
        "/demo/provider/callback",
        params={"code": "x", "state": state, "iss": "http://127.0.0.1:8000"},
    )
    assert answer.status_code == 400
    assert "does not belong to this sign-in" in answer.text


@pytest.mark.parametrize("code", ["not-a-code", "é²µ Zoë", "L" * 5000])
def test_a_callback_whose_code_carebridge_refuses_is_a_page_not_a_500(
    demo: tuple[Runtime, TestClient, DemoConfig], code: str
) -> None:
    # The sign-in's own state and issuer, a code carebridge never issued (or one already
    # used: a reloaded callback): the token endpoint answers invalid_grant.
    _, client, _ = demo
    start = client.get("/demo/provider/login", follow_redirects=False)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    with captured_log() as log:
        answer = client.get(
            "/demo/provider/callback", params={"code": code, "state": state, "iss": ISSUER}
        )
    assert answer.status_code == 400
    assert "carebridge refused the sign-in" in answer.text
    assert "Traceback" not in log.getvalue()
    assert "Sign in with carebridge" in client.get("/demo/provider/").text


def test_signing_out_of_the_app_needs_the_form_token(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, _ = demo
    _clinician_signed_in(runtime, client)
    _sign_in_to_the_app(client)
    forged = client.post("/demo/provider/logout", data={}, follow_redirects=False)
    assert forged.status_code == 403
    home = client.get("/demo/provider/")
    assert "Care team threads" in home.text
    out = client.post(
        "/demo/provider/logout", data={"csrf_token": csrf(home.text)}, follow_redirects=False
    )
    assert out.status_code == 303
    assert urlsplit(out.headers["location"]).path == "/end-session"


def test_the_demo_app_shows_a_new_patient_started_thread(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, config = demo
    team, patient_id = config.care_team_id, config.patients[0].patient_id
    configure(runtime, team, actor="t", patients_may_start=True)
    topic = add_topic(runtime, team, "General question", actor="t")
    operator_start(runtime, team, patient_id, actor="t")
    with transaction(runtime.sessions) as db:
        threads.start_by_patient(
            db,
            runtime.keyring,
            runtime.settings,
            Actor("patient", patient_id),
            care_team_id=team,
            topic_id=topic,
            subject="A question from me",
            body="Hello",
        )
    _clinician_signed_in(runtime, client)
    _sign_in_to_the_app(client)
    home = client.get("/demo/provider/")
    assert "A question from me" in home.text and "<strong>Patient</strong>" in home.text
