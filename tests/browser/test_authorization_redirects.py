"""In a real browser, form submissions that end at another origin arrive there: the
consent page's answer to a provider app, and sign-in with a remembered grant.

Chromium applies a page's CSP form-action to every redirect its form leads to, so a
policy of ``form-action 'self'`` would silently stop an authorization response on its
way to the app; the in-process tests cannot see that.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from playwright.sync_api import Page, expect

from identity import sessions
from tests.browser.harness import check_accessibility
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.live_server import LiveApp


def test_the_consent_answer_reaches_an_app_on_another_origin(live_app: LiveApp, page: Page) -> None:
    # localhost and 127.0.0.1 are different origins: the app lives on the other one.
    port = urlsplit(live_app.url).port
    redirect_uri = f"http://localhost:{port}/app/callback"
    registered = helpers.register(live_app.runtime, redirect_uri=redirect_uri)
    account_id = factories.account(live_app.runtime)
    factories.totp(live_app.runtime, account_id)
    token = factories.session(live_app.runtime, account_id, level=sessions.SECOND_FACTOR)
    page.context.add_cookies(
        [{"name": sessions.cookie_name(live_app.runtime), "value": token, "url": live_app.url}]
    )
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope="openid")
    page.goto(f"{live_app.url}/authorize?{urlencode(params)}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Allow")
    check_accessibility(page)
    page.get_by_role("button", name="Allow", exact=True).click()
    # (Playwright's routing does not see redirected requests: the address bar does.)
    page.wait_for_url(f"{redirect_uri}*")
    query = parse_qs(urlsplit(page.url).query)
    assert query["state"] == [params["state"]] and query["iss"] == [live_app.url]
    assert query["code"]
