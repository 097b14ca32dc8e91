"""Back to where the patient was going: /verify and /activate honour ``next`` (a page that
sends an unverified patient here, messaging or the OIDC authorize step), through the
tie-breaker step too, and never as an open redirect (both backends)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from carebridge.runtime import Runtime
from identity import sessions
from identity.flows import verify
from identity.roster import staff

from . import factories
from .test_verify import TWIN_A, ZEB, api, link_of, load_roster, patient_of, person

THREAD = "/messages/th_0123456789abcdef"
AUTHORIZE = "/oauth2/authorize?client_id=app&response_type=code&scope=openid&state=s%20t"
# Each of these would leave the site (or smuggle a header): the default instead.
HOSTILE = [
    "https://evil.example/phish",
    "//evil.example/phish",
    "/\\evil.example/phish",
    "\\\\evil.example",
    "javascript:alert(1)",
    "/account\r\nSet-Cookie: x=1",
    "evil.example",
]


@pytest.fixture
def roster(runtime: Runtime, tmp_path: Path) -> None:
    load_roster(runtime, tmp_path)


def signed_in_page(client: TestClient, runtime: Runtime) -> str:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=sessions.SECOND_FACTOR)
    return account_id


def zeb_form(csrf: str, next_to: str | None) -> dict[str, str]:
    form = {"csrf_token": csrf, "ssn4": ZEB[3], "dob_day": "14", "dob_month": "3"}
    form |= {"dob_year": "1961"}
    if next_to is not None:
        form["next"] = next_to
    return form


@pytest.mark.parametrize("next_to", [THREAD, AUTHORIZE])
def test_the_page_goes_back_to_next_after_verifying(
    client: TestClient, runtime: Runtime, roster: None, next_to: str
) -> None:
    account_id = signed_in_page(client, runtime)
    page = client.get("/verify", params={"next": next_to})
    assert page.status_code == 200
    assert 'name="next"' in page.text
    response = client.post(
        "/verify", data=zeb_form(factories.csrf(page.text), next_to), follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == next_to
    assert link_of(runtime, account_id) == patient_of(runtime, ZEB)


def test_next_survives_the_tiebreaker_step(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = signed_in_page(client, runtime)
    csrf = factories.csrf(client.get("/verify", params={"next": THREAD}).text)
    form = {"csrf_token": csrf, "ssn4": TWIN_A[3], "dob_day": "4", "dob_month": "7"}
    form |= {"dob_year": "1975", "next": THREAD}
    step = client.post("/verify", data=form)
    assert step.status_code == 422 and verify.NEED_MORE in step.text
    assert f'name="next" value="{THREAD}"' in step.text
    # The browser posts the re-rendered form: its hidden next, now with the last name.
    form |= {"last_name": TWIN_A[1]}
    done = client.post("/verify", data=form, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == THREAD
    assert link_of(runtime, account_id) == patient_of(runtime, TWIN_A)


def test_a_form_error_keeps_next(client: TestClient, runtime: Runtime, roster: None) -> None:
    signed_in_page(client, runtime)
    csrf = factories.csrf(client.get("/verify").text)
    form = zeb_form(csrf, THREAD) | {"dob_day": "31", "dob_month": "2"}
    refused = client.post("/verify", data=form)
    assert refused.status_code == 400
    assert f'name="next" value="{THREAD}"' in refused.text


@pytest.mark.parametrize("hostile", HOSTILE)
def test_next_never_leaves_the_site(
    client: TestClient, runtime: Runtime, roster: None, hostile: str
) -> None:
    account_id = signed_in_page(client, runtime)
    page = client.get("/verify", params={"next": hostile})
    assert "evil.example" not in page.text and "javascript:" not in page.text
    if set(hostile) & set("\r\n"):
        # Refused at the input boundary, the form's post too: no redirect, nothing linked.
        assert page.status_code == 400
        form = zeb_form(factories.csrf(client.get("/verify").text), hostile)
        assert client.post("/verify", data=form, follow_redirects=False).status_code == 400
        assert link_of(runtime, account_id) is None
        return
    response = client.post(
        "/verify", data=zeb_form(factories.csrf(page.text), hostile), follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    assert link_of(runtime, account_id) is not None


def test_a_verified_patient_sent_to_verify_goes_straight_on(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    signed_in_page(client, runtime)
    csrf = factories.csrf(client.get("/verify").text)
    client.post("/verify", data=zeb_form(csrf, None), follow_redirects=False)
    again = client.get("/verify", params={"next": THREAD}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == THREAD
    hostile = client.get("/verify", params={"next": "//evil.example"}, follow_redirects=False)
    assert hostile.status_code == 200 and "Your identity is verified" in hostile.text


def test_signing_in_first_comes_back_to_verify_with_next(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    response = client.get("/verify", params={"next": THREAD}, follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/signin"
    back = parse_qs(location.query)["next"][0]
    assert urlsplit(back).path == "/verify"
    assert parse_qs(urlsplit(back).query)["next"] == [THREAD]


# The JSON API


def test_the_api_echoes_a_safe_next_on_success_and_on_409(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id, token = factories.account(runtime), ""
    token = factories.session(runtime, account_id, level=sessions.SECOND_FACTOR)
    headers = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/verify"
    response = client.post(url, params={"next": AUTHORIZE}, json=person(ZEB), headers=headers)
    assert response.status_code == 200
    assert response.json() == {"status": "verified", "next": AUTHORIZE}
    again = client.post(url, params={"next": THREAD}, json=person(ZEB), headers=headers)
    assert again.status_code == 409 and again.json()["next"] == THREAD


@pytest.mark.parametrize("hostile", HOSTILE[:3])
def test_the_api_never_echoes_a_hostile_next(
    client: TestClient, runtime: Runtime, roster: None, hostile: str
) -> None:
    account_id = factories.account(runtime)
    token = factories.session(runtime, account_id, level=sessions.SECOND_FACTOR)
    response = client.post(
        "/api/v1/verify",
        params={"next": hostile},
        json=person(ZEB),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert response.json() == {"status": "verified", "next": "/account"}


def test_without_next_the_api_answers_as_before(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    account_id = factories.account(runtime)
    token = factories.session(runtime, account_id, level=sessions.SECOND_FACTOR)
    assert api(client, token, person(ZEB)).json() == {"status": "verified"}


# Activation codes


def test_activation_goes_back_to_next_and_never_off_site(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    patient = patient_of(runtime, ZEB)
    signed_in_page(client, runtime)
    page = client.get("/activate", params={"next": THREAD})
    assert f'name="next" value="{THREAD}"' in page.text
    csrf = factories.csrf(page.text)
    wrong = client.post(
        "/activate",
        data={"csrf_token": csrf, "code": "AAAA-BBBB-CCCC", "dob": ZEB[2], "next": THREAD},
    )
    assert wrong.status_code == 400 and f'name="next" value="{THREAD}"' in wrong.text
    code = staff.issue_code(runtime, patient, reason="front desk").code
    done = client.post(
        "/activate",
        data={"csrf_token": csrf, "code": code, "dob": ZEB[2], "next": THREAD},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == THREAD

    signed_in_page(client, runtime)
    other = patient_of(runtime, TWIN_A)
    code = staff.issue_code(runtime, other, reason="front desk").code
    csrf = factories.csrf(client.get("/activate").text)
    hostile = client.post(
        "/activate",
        data={"csrf_token": csrf, "code": code, "dob": TWIN_A[2], "next": "//evil.example"},
        follow_redirects=False,
    )
    assert hostile.status_code == 303 and hostile.headers["location"] == "/activate"


def test_the_verify_page_offers_activation_with_next(
    client: TestClient, runtime: Runtime, roster: None
) -> None:
    signed_in_page(client, runtime)
    page = client.get("/verify", params={"next": THREAD})
    assert 'href="/activate?next=%2Fmessages%2Fth_0123456789abcdef"' in page.text
