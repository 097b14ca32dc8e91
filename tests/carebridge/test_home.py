"""The home page: what carebridge is and the way in for a visitor; the account's entries
for someone signed in. The favicon, wherever a browser looks for it."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from carebridge.runtime import Runtime
from identity import sessions
from tests.identity import factories


def _links(html: str) -> set[str]:
    return set(re.findall(r'<a [^>]*href="([^"]+)"', html))


def test_a_visitor_learns_what_carebridge_is_and_can_sign_in_or_sign_up(
    client: TestClient,
) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    assert "exchange secure messages with your care team" in html
    assert '<a class="button" href="/signin">Sign in</a>' in html
    assert '<a class="button secondary" href="/signup">Create an account</a>' in html
    assert "/account/security" not in _links(html)
    assert 'action="/signout"' not in html


def test_a_signed_in_person_sees_their_account_entries(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    html = client.get("/").text
    assert {
        "/account",
        "/messages",
        "/account/notifications",
        "/account/security",
        "/account/methods",
        "/account/sessions",
    } <= _links(html)
    assert 'action="/signout"' in html and 'name="csrf_token"' in html
    assert "/signin" not in _links(html) and "/signup" not in _links(html)


def test_a_sign_in_waiting_for_its_second_factor_is_not_signed_in(
    client: TestClient, runtime: Runtime
) -> None:
    # Password done, authenticator code not yet: the home page neither redirects nor
    # shows the account's entries.
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id, level=sessions.FIRST_FACTOR)
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 200
    assert "/signin" in _links(response.text)
    assert "/account/security" not in _links(response.text)


def test_every_page_links_the_favicon_and_favicon_ico_leads_to_it(client: TestClient) -> None:
    for path in ("/", "/signin"):
        html = client.get(path).text
        assert '<link rel="icon" type="image/svg+xml" href="/static/favicon.svg">' in html
    redirect = client.get("/favicon.ico", follow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"]) == (301, "/static/favicon.svg")
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")
