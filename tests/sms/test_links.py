"""Secure links: the token leaves the address bar, sign-in as that patient, then the thread."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import links
from sms.models import SecureLink
from tests.identity import factories
from tests.sms.helpers import People, client_for


@pytest.fixture
def web(runtime: Runtime) -> Iterator[TestClient]:
    with client_for(runtime) as client:
        yield client


def new_link(runtime: Runtime, patient_id: str, *, hours: float | None = None) -> str:
    now = utcnow()
    if hours is not None:
        now -= timedelta(hours=runtime.settings.sms_link_hours) - timedelta(hours=hours)
    with transaction(runtime.sessions) as db:
        url = links.create(
            db, runtime, patient_id=patient_id, thread_id="thr_abc", notification_id=None, now=now
        )
    return url.split("/l/")[1]


def open_link(web: TestClient, token: str) -> None:
    response = web.get(f"/l/{token}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/l"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_token_is_128_bits_stored_hashed_and_bound(runtime: Runtime, people: People) -> None:
    token = new_link(runtime, people["zeb"].patient_id)
    assert len(token) >= 22  # 16 random bytes, base64url
    with runtime.sessions() as db:
        row = db.scalars(select(SecureLink)).one()
    assert token not in row.token_hash
    assert (row.patient_id, row.thread_id) == (people["zeb"].patient_id, "thr_abc")
    lifetime = row.expires_at - row.created_at  # type: ignore[operator]
    assert lifetime == timedelta(hours=72)


def test_the_patient_signs_in_then_reaches_the_thread(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    token = new_link(runtime, people["zeb"].patient_id)
    open_link(web, token)
    response = web.get("/l", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=%2Fl")
    assert token not in response.headers["location"]
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    response = web.get("/l", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/messages/thr_abc"


def test_a_signed_in_patient_goes_straight_to_the_thread(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    open_link(web, new_link(runtime, people["zeb"].patient_id))
    response = web.get("/l", follow_redirects=False)
    assert response.headers["location"] == "/messages/thr_abc"
    # The visit is used up: the cookie does not open it twice.
    assert web.get("/l", follow_redirects=False).status_code == 404


def test_first_factor_only_is_sent_on_to_mfa(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=1)
    open_link(web, new_link(runtime, people["zeb"].patient_id))
    response = web.get("/l", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/mfa/challenge?next=%2Fl")


def generic_page(web: TestClient) -> str:
    response = web.get("/l", follow_redirects=False)
    assert response.status_code == 404
    assert "Sign in to read your messages" in response.text
    return response.text.split('<main id="main" tabindex="-1">')[1].split("</main>")[0]


def test_another_patient_gets_the_same_page_as_an_unknown_link(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    factories.sign_in(web, runtime, people["otto"].account_id, level=2)
    open_link(web, new_link(runtime, people["zeb"].patient_id))
    someone_elses = generic_page(web)
    open_link(web, "A" * 22)
    unknown = generic_page(web)
    assert someone_elses == unknown
    assert "thr_abc" not in someone_elses


def test_an_account_that_is_no_patient_gets_the_generic_page(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    stranger = factories.account(runtime)
    factories.totp(runtime, stranger)
    factories.sign_in(web, runtime, stranger, level=2)
    open_link(web, new_link(runtime, people["zeb"].patient_id))
    generic_page(web)


def test_an_expired_link_shows_the_generic_page(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    factories.sign_in(web, runtime, people["zeb"].account_id, level=2)
    open_link(web, new_link(runtime, people["zeb"].patient_id, hours=-0.01))
    generic_page(web)


@pytest.mark.parametrize("token", ["short", "x" * 200, "../../etc", "%00"])
def test_malformed_tokens_get_the_generic_page(
    runtime: Runtime, web: TestClient, token: str
) -> None:
    response = web.get(f"/l/{token}", follow_redirects=False)
    if response.status_code == 303:
        assert response.headers["location"] == "/l"
        generic_page(web)
    else:
        # A NUL never reaches the handler: refused at the input boundary.
        assert response.status_code == (400 if token == "%00" else 404)


def test_the_link_cookie_is_httponly_and_scoped_to_l(
    runtime: Runtime, web: TestClient, people: People
) -> None:
    token = new_link(runtime, people["zeb"].patient_id)
    response = web.get(f"/l/{token}", follow_redirects=False)
    cookie = next(c for c in response.headers.get_list("set-cookie") if "carebridge_link=" in c)
    assert "HttpOnly" in cookie
    assert "Path=/l" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert token not in cookie


def test_the_token_never_reaches_the_log(
    runtime: Runtime, web: TestClient, people: People, caplog: pytest.LogCaptureFixture
) -> None:
    token = new_link(runtime, people["zeb"].patient_id)
    with caplog.at_level("DEBUG"):
        open_link(web, token)
        web.get("/l", follow_redirects=False)
    access = [r for r in caplog.records if r.name == "carebridge.access"]
    assert any(getattr(r, "route", None) == "/l/{token}" for r in access)
    # httpx is the test's own client, logging what it requested.
    server = [r for r in caplog.records if not r.name.startswith("httpx")]
    everything = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in server)
    assert token not in everything
