"""The authorization code flow with PKCE, in process: the happy path, consent, subjects,
and every "bad input" of the issue answered with the RFC's error and nothing issued."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import subjects
from identity.oidc.grants import AuthorizationCodeGrant
from identity.oidc.models import OidcAuthorizationCode, OidcClient, OidcRefreshToken
from tests.identity.oidc import helpers


@pytest.fixture
def registered(runtime: Runtime) -> helpers.Registered:
    return helpers.register(runtime)


@pytest.fixture
def someone(client: TestClient, runtime: Runtime, tmp_path: Path) -> helpers.Person:
    signed_in = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, signed_in.session_token)
    return signed_in


def _flow(
    client: TestClient, registered: helpers.Registered, scope: str = "openid offline_access"
) -> tuple[dict[str, list[str]], str, dict[str, str]]:
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope=scope)
    return helpers.approve(client, params), verifier, params


def _authorize(client: TestClient, **params: str) -> tuple[int, str]:
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    return response.status_code, response.headers.get("location", "")


def _query(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


def test_code_flow_issues_tokens_with_the_contract(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    answer, verifier, params = _flow(client, registered)
    assert answer["state"] == [params["state"]]
    assert answer["iss"] == [runtime.settings.issuer]
    response = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    keys = runtime.keyring.verification_keys()
    access = jwt.decode(body["access_token"], keys)
    assert access.header["typ"] == "at+jwt"
    assert access.header["kid"] == runtime.keyring.active_signing_key.kid
    assert access.claims["aud"] == runtime.settings.api_audience
    assert access.claims["iss"] == runtime.settings.issuer
    assert access.claims["client_id"] == registered.client_id
    assert access.claims["exp"] - access.claims["iat"] == 600
    assert access.claims["scope"] == "openid offline_access"
    assert isinstance(access.claims["auth_time"], int)
    assert access.claims["grant_id"].startswith("fam_")  # what ending the grant withdraws
    id_token = jwt.decode(body["id_token"], keys)
    assert id_token.claims["nonce"] == params["nonce"]
    assert id_token.claims["aud"] == [registered.client_id]
    assert id_token.claims["sub"] == access.claims["sub"]
    assert id_token.claims["auth_time"] == access.claims["auth_time"]
    assert "at_hash" in id_token.claims
    assert body["refresh_token"] and "patient" not in body
    # The pairwise subject maps back to the account for resource servers.
    with runtime.sessions() as db:
        found = subjects.account_for(
            db, client_id=registered.client_id, subject=access.claims["sub"]
        )
    assert found == someone.account_id
    assert access.claims["sub"] != someone.patient_id


def test_refresh_tokens_are_stored_hashed(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    answer, verifier, _ = _flow(client, registered)
    body = helpers.exchange(client, registered, answer["code"][0], verifier).json()
    with runtime.sessions() as db:
        stored = db.scalars(select(OidcRefreshToken.token_hash)).all()
        codes = db.scalars(select(OidcAuthorizationCode.code_hash)).all()
    assert body["refresh_token"] not in stored and len(stored) == 1
    assert answer["code"][0] not in codes


def test_a_remembered_grant_skips_the_consent_page(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _flow(client, registered)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    status, location = _authorize(client, **params)
    assert status == 303 and "code" in _query(location)
    # Asking for more than was granted asks again.
    params = helpers.authorization_params(registered, challenge, scope="openid email")
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 200 and "Allow Clinic Scheduler" in response.text


def test_prompt_none_without_a_grant_answers_consent_required(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, prompt="none")
    status, location = _authorize(client, **params)
    assert status == 303
    assert _query(location)["error"] == ["consent_required"]


def test_denying_consent_returns_access_denied_with_iss_and_state(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    page = client.get(f"/authorize?{urlencode(params)}")
    fields = helpers.consent_fields(page.text)
    # Each authorization parameter is carried once (a repeated one is refused).
    names = [name for name, _ in fields]
    assert len(names) == len(set(names))
    response = client.post(
        "/authorize",
        content=urlencode([*fields, ("decision", "deny")]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    answer = _query(response.headers["location"])
    assert answer["error"] == ["access_denied"]
    assert answer["state"] == [params["state"]]
    assert answer["iss"] == [runtime.settings.issuer]


def test_consent_without_csrf_token_is_refused(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    fields = [
        (k, v)
        for k, v in helpers.consent_fields(client.get(f"/authorize?{urlencode(params)}").text)
        if k != "csrf_token"
    ]
    response = client.post(
        "/authorize",
        content=urlencode([*fields, ("decision", "allow")]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_signing_in_comes_first(client: TestClient, registered: helpers.Registered) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    status, location = _authorize(client, **params)
    assert status == 303 and location.startswith("/signin?")
    back_to = _query(location)["next"][0]
    assert back_to.startswith("/authorize?") and params["state"] in back_to


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "cli_unknown"},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": "https://app.example.org/callback/"},
        {"redirect_uri": ""},
        {"state": "x" * 5000},
    ],
    ids=["unknown-client", "other-redirect", "near-redirect", "no-redirect", "oversized"],
)
def test_bad_client_or_redirect_gets_an_error_page_never_a_redirect(
    client: TestClient,
    registered: helpers.Registered,
    someone: helpers.Person,
    change: dict[str, str],
) -> None:
    _, challenge = helpers.pkce()
    params = {**helpers.authorization_params(registered, challenge), **change}
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "can't sign you in" in response.text


def test_a_disabled_client_gets_the_error_page(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    with transaction(runtime.sessions) as db:
        db.execute(update(OidcClient).values(disabled_at=datetime.now(UTC)))
    _, challenge = helpers.pkce()
    response = client.get(
        f"/authorize?{urlencode(helpers.authorization_params(registered, challenge))}",
        follow_redirects=False,
    )
    assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"scope": "openid launch/everything"}, "invalid_scope"),
        ({"scope": "openid admin.roster"}, "invalid_scope"),
        ({"scope": "openid fhirUser"}, "invalid_scope"),  # not registered for this client
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
    ],
    ids=[
        "no-pkce",
        "plain",
        "no-method",
        "unknown-scope",
        "admin-scope",
        "unregistered-scope",
        "implicit",
        "hybrid",
    ],
)
def test_bad_requests_go_back_to_the_client_with_the_rfc_error(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
    change: dict[str, str | None],
    error: str,
) -> None:
    _, challenge = helpers.pkce()
    params = {**helpers.authorization_params(registered, challenge), **change}
    status, location = _authorize(client, **{k: v for k, v in params.items() if v is not None})
    assert status == 303
    answer = _query(location)
    assert location.startswith(registered.redirect_uri)
    assert answer["error"] == [error]
    assert answer["iss"] == [runtime.settings.issuer]
    assert "code" not in answer


def _issued(client: TestClient, registered: helpers.Registered) -> tuple[str, str]:
    answer, verifier, _ = _flow(client, registered)
    return answer["code"][0], verifier


def test_wrong_or_missing_pkce_verifier_issues_nothing(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    wrong = helpers.exchange(client, registered, code, helpers.pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    missing = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": registered.redirect_uri,
        },
        auth=helpers.basic(registered),
    )
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    assert "access_token" not in wrong.json() and "access_token" not in missing.json()
    # The code survives failed verifier checks and still works with the right one.
    assert helpers.exchange(client, registered, code, verifier).status_code == 200


def test_a_reused_code_is_refused_and_revokes_what_it_gave(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    first = helpers.exchange(client, registered, code, verifier).json()
    again = helpers.exchange(client, registered, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    refreshed = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=helpers.basic(registered),
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    with runtime.sessions() as db:
        actions = db.scalars(select(AuditRecord.action)).all()
    assert "identity.oidc.code.reused" in actions


def test_an_expired_code_is_refused(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    with transaction(runtime.sessions) as db:
        past = datetime.now(UTC) - timedelta(seconds=1)
        db.execute(update(OidcAuthorizationCode).values(expires_at=past))
    response = helpers.exchange(client, registered, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_mismatched_redirect_uri_at_the_token_endpoint_is_refused(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    response = helpers.exchange(
        client, registered, code, verifier, redirect_uri="https://app.example.org/other"
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_another_clients_code_is_refused(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    other = helpers.register(runtime, name="Other")
    response = helpers.exchange(client, other, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "data",
    [
        {"grant_type": "password", "username": "a", "password": "b"},
        {"grant_type": "implicit"},
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
    ],
    ids=["password", "implicit", "device"],
)
def test_other_grant_types_are_unsupported(
    client: TestClient, registered: helpers.Registered, data: dict[str, str]
) -> None:
    response = client.post("/oauth2/token", data=data, auth=helpers.basic(registered))
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ("grant_type=authorization_code&code=" + "a" * 5000, "application/x-www-form-urlencoded"),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "application/x-www-form-urlencoded",
        ),
        ('{"grant_type": "client_credentials"}', "application/json"),
        ("grant_type=client_credentials&x=" + "a" * 70000, "application/x-www-form-urlencoded"),
    ],
    ids=["oversized-parameter", "repeated-parameter", "json", "oversized-body"],
)
def test_malformed_token_requests_are_invalid_requests(
    client: TestClient, registered: helpers.Registered, content: str, content_type: str
) -> None:
    response = client.post(
        "/oauth2/token",
        content=content,
        headers={"Content-Type": content_type},
        auth=helpers.basic(registered),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_a_public_client_needs_no_secret_but_pkce(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    public = helpers.register(runtime, client_type="public", name="Patient app")
    code, verifier = _issued(client, public)
    response = helpers.exchange(client, public, code, verifier, client_id=public.client_id)
    assert response.status_code == 200, response.text


def test_a_confidential_client_must_authenticate(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    code, verifier = _issued(client, registered)
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": registered.redirect_uri,
            "client_id": registered.client_id,
        },
    )
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    wrong = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": registered.redirect_uri,
        },
        auth=(registered.client_id, "not-the-secret"),
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_client_secret_post_works_when_registered(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    posting = helpers.register(runtime, auth_method="client_secret_post")
    code, verifier = _issued(client, posting)
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": posting.redirect_uri,
            "client_id": posting.client_id,
            "client_secret": posting.secret or "",
        },
    )
    assert response.status_code == 200, response.text


# Subjects and patient claims


def test_pairwise_subjects_differ_between_sectors(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    first = helpers.register(runtime, redirect_uri="https://one.example/cb")
    second = helpers.register(runtime, redirect_uri="https://two.example/cb")
    subs = []
    for registered in (first, second):
        code, verifier = _issued(client, registered)
        body = helpers.exchange(client, registered, code, verifier).json()
        subs.append(jwt.decode(body["id_token"], runtime.keyring.verification_keys()).claims["sub"])
    assert subs[0] != subs[1]
    assert someone.patient_id not in subs


def test_first_party_clients_see_the_patient_id(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    first_party = helpers.register(
        runtime, first_party=True, scopes="openid launch/patient fhirUser patient/*.rs"
    )
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(
        first_party, challenge, scope="openid launch/patient fhirUser patient/Observation.rs"
    )
    status, location = _authorize(client, **params)  # first party: no consent page
    assert status == 303
    code = _query(location)["code"][0]
    body = helpers.exchange(client, first_party, code, verifier).json()
    assert body["patient"] == someone.patient_id
    claims = jwt.decode(body["access_token"], runtime.keyring.verification_keys()).claims
    assert claims["sub"] == someone.patient_id
    assert "patient/Observation.rs" in claims["scope"].split()
    id_claims = jwt.decode(body["id_token"], runtime.keyring.verification_keys()).claims
    assert id_claims["fhirUser"] == f"Patient/{someone.patient_id}"


def test_first_party_clients_need_a_verified_patient(client: TestClient, runtime: Runtime) -> None:
    unverified = helpers.person(runtime, verified=False)
    helpers.use_session(client, runtime, unverified.session_token)
    first_party = helpers.register(runtime, first_party=True)
    _, challenge = helpers.pkce()
    status, location = _authorize(client, **helpers.authorization_params(first_party, challenge))
    assert status == 303 and location.startswith("/verify?next=%2Fauthorize")


def test_unverified_patients_get_no_patient_claims(client: TestClient, runtime: Runtime) -> None:
    unverified = helpers.person(runtime, verified=False)
    helpers.use_session(client, runtime, unverified.session_token)
    smart = helpers.register(runtime, scopes="openid launch/patient fhirUser")
    answer, verifier, _ = _flow(client, smart, scope="openid launch/patient fhirUser")
    body = helpers.exchange(client, smart, answer["code"][0], verifier).json()
    assert "patient" not in body
    claims = jwt.decode(body["id_token"], runtime.keyring.verification_keys()).claims
    assert "fhirUser" not in claims


def test_smart_patient_for_a_third_party_is_its_pairwise_subject(
    client: TestClient, runtime: Runtime, someone: helpers.Person
) -> None:
    smart = helpers.register(runtime, scopes="openid launch/patient patient/*.rs")
    answer, verifier, _ = _flow(client, smart, scope="openid launch/patient patient/Observation.rs")
    body = helpers.exchange(client, smart, answer["code"][0], verifier).json()
    claims = jwt.decode(body["access_token"], runtime.keyring.verification_keys()).claims
    assert body["patient"] == claims["sub"] != someone.patient_id


@pytest.mark.parametrize("extra", [{"prompt": "login"}, {"max_age": "0"}])
def test_prompt_login_and_max_age_ask_to_confirm_it_is_you(
    client: TestClient,
    registered: helpers.Registered,
    someone: helpers.Person,
    extra: dict[str, str],
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, **extra)
    status, location = _authorize(client, **params)
    assert status == 303 and location.startswith("/reauth?")
    back_to = _query(location)["next"][0]
    assert "prompt=login" not in back_to and "max_age" not in back_to
    assert params["state"] in back_to


def test_prompt_none_with_prompt_login_is_login_required(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, max_age="0", prompt="none")
    status, location = _authorize(client, **params)
    assert status == 303 and _query(location)["error"] == ["login_required"]


def test_issued_tokens_never_reach_the_logs_even_at_debug(
    client: TestClient,
    registered: helpers.Registered,
    someone: helpers.Person,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, verifier, _ = _flow(client, registered)
    body = helpers.exchange(client, registered, answer["code"][0], verifier).json()
    logged = " ".join(record.getMessage() for record in caplog.records)
    for secret in (body["access_token"], body["refresh_token"], answer["code"][0]):
        assert secret not in logged


def test_the_consent_post_gets_the_same_parameter_limits_as_the_request(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope="openid")
    page = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    assert page.status_code == 200
    # The form's hidden fields, with an oversized nonce the GET would have refused.
    fields = [
        (key, "n" * 20_000 if key == "nonce" else value)
        for key, value in helpers.consent_fields(page.text)
    ]
    answer = client.post(
        "/authorize",
        content=urlencode([*fields, ("decision", "allow")]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code == 400
    assert "location" not in answer.headers
    with client.app.state.runtime.sessions() as db:  # type: ignore[attr-defined]
        assert db.scalars(select(OidcAuthorizationCode)).all() == []


def test_a_returning_users_code_exchange_makes_no_orm_session(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    # The first exchange records the user's subject for the client (with a Session); a
    # later one runs its statements on the transaction's connection alone.
    first, first_verifier, _ = _flow(client, registered)
    assert helpers.exchange(client, registered, first["code"][0], first_verifier).is_success
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    with helpers.provider_sessions() as made:
        response = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert response.status_code == 200, response.text
    assert "id_token" in response.json()
    assert made == []


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "worker thread"])
def test_an_exchange_that_loses_the_claim_stores_nothing_and_revokes_audited(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    registered: helpers.Registered,
    someone: helpers.Person,
    monkeypatch: pytest.MonkeyPatch,
    on_loop: bool,
) -> None:
    # Another exchange uses the code between this one's lookup and its claim: this one
    # stores no refresh token, and the code's family is revoked with its audit record.
    if not on_loop:
        helpers.on_worker_threads(runtime)
    # A returning user's (the first exchange records the subject, in a worker thread).
    returning, returning_verifier = _issued(client, registered)
    assert helpers.exchange(client, registered, returning, returning_verifier).is_success
    code, verifier = _issued(client, registered)
    raced = helpers.lose_the_claim(monkeypatch, AuthorizationCodeGrant, OidcAuthorizationCode)
    refused = helpers.exchange(client, registered, code, verifier)
    loop = on_loop and not runtime.settings.uses_sqlite
    assert raced == (["event loop"] if loop else ["worker thread"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    with runtime.sessions() as db:
        stored = db.scalars(select(OidcRefreshToken)).all()
        actions = db.scalars(select(AuditRecord.action)).all()
    assert len(stored) == 1  # the first exchange's, still valid
    assert stored[0].revoked_at is None
    assert actions.count("identity.oidc.code.reused") == 1
