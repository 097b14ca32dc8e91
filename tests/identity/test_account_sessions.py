"""The account pages and active sessions: listing, revoking, and revoking someone else's;
the API never acting on the session cookie; a factor change signing out the other
sessions."""

from __future__ import annotations

from datetime import UTC, datetime

import pyotp
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import sessions
from identity.credentials import recovery
from identity.models import (
    AuthSession,
    PasswordCredential,
    TotpCredential,
    UpstreamIdentity,
    new_id,
)
from tests.identity import factories
from tests.identity.verification_mail import signed_up


def _handles(runtime: Runtime, account_id: str) -> set[str]:
    with runtime.sessions() as db:
        query = select(AuthSession.handle).where(AuthSession.account_id == account_id)
        return set(db.scalars(query))


def _handle_of(runtime: Runtime, token: str) -> str:
    with runtime.sessions() as db:
        row = db.get(AuthSession, runtime.keyring.lookup_hash("session", token))
        assert row is not None
        return row.handle


def _audit(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [(row.action, row.outcome, row.target) for row in rows]


def _enrolled(runtime: Runtime) -> str:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    return account_id


def test_account_pages_need_the_second_step(client: TestClient, runtime: Runtime) -> None:
    factories.sign_in(client, runtime, _enrolled(runtime))
    for path in ["/account", "/account/security", "/account/sessions"]:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/mfa/challenge?next=")


def test_account_pages_without_a_session_send_to_sign_in(client: TestClient) -> None:
    for path in ["/account", "/account/security", "/account/sessions"]:
        response = client.get(path, follow_redirects=False)
        assert response.headers["location"].startswith("/signin?next="), path


def test_account_home_links_to_the_settings(client: TestClient, runtime: Runtime) -> None:
    factories.sign_in(client, runtime, _enrolled(runtime), level=2)
    page = client.get("/account")
    assert page.status_code == 200
    assert 'href="/account/security"' in page.text
    assert 'href="/account/sessions"' in page.text


def test_sessions_page_lists_the_accounts_sessions_and_marks_this_one(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2, user_agent="Phone <b>x</b>")
    stranger = factories.session(runtime, _enrolled(runtime), level=2, user_agent="Stranger")
    mine = factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/account/sessions")
    assert page.status_code == 200
    assert _handle_of(runtime, other_device) in page.text
    assert _handle_of(runtime, mine) in page.text
    assert _handle_of(runtime, stranger) not in page.text
    assert "Stranger" not in page.text
    assert "Phone &lt;b&gt;x&lt;/b&gt;" in page.text  # escaped
    assert page.text.count("(this session)") == 1
    assert other_device not in page.text and mine not in page.text  # handles, never tokens


def test_revoking_another_of_ones_own_sessions_ends_it(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2)
    factories.sign_in(client, runtime, account_id, level=2)
    handle = _handle_of(runtime, other_device)
    page = client.get("/account/sessions")
    response = client.post(
        "/account/sessions/revoke",
        data={"csrf_token": factories.csrf(page.text), "handle": handle},
        follow_redirects=False,
    )
    assert (response.status_code, response.headers["location"]) == (303, "/account/sessions")
    assert handle not in _handles(runtime, account_id)
    assert client.get("/account/sessions").status_code == 200  # this session lives on
    assert ("identity.session.revoke", "allowed", f"session:{handle}") in _audit(runtime)


def test_revoking_this_session_signs_out(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    mine = factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/account/sessions")
    response = client.post(
        "/account/sessions/revoke",
        data={"csrf_token": factories.csrf(page.text), "handle": _handle_of(runtime, mine)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert _handles(runtime, account_id) == set()
    assert client.get("/account", follow_redirects=False).headers["location"].startswith("/signin")


def test_revoking_another_accounts_session_does_nothing_and_answers_not_found(
    client: TestClient, runtime: Runtime
) -> None:
    victim = _enrolled(runtime)
    victim_token = factories.session(runtime, victim, level=2)
    victim_handle = _handle_of(runtime, victim_token)
    factories.sign_in(client, runtime, _enrolled(runtime), level=2)
    token = factories.csrf(client.get("/account/sessions").text)

    theirs = client.post(
        "/account/sessions/revoke", data={"csrf_token": token, "handle": victim_handle}
    )
    missing = client.post(
        "/account/sessions/revoke", data={"csrf_token": token, "handle": "ses_" + "A" * 22}
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text.replace(theirs.headers["x-request-id"], "") == missing.text.replace(
        missing.headers["x-request-id"], ""
    )
    assert _handles(runtime, victim) == {victim_handle}
    assert ("identity.session.revoke", "denied", f"session:{victim_handle}") in _audit(runtime)


def test_revoke_without_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2)
    factories.sign_in(client, runtime, account_id, level=2)
    handle = _handle_of(runtime, other_device)
    response = client.post("/account/sessions/revoke", data={"handle": handle})
    assert response.status_code == 403
    assert handle in _handles(runtime, account_id)


def test_revoke_from_another_site_is_refused(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2)
    factories.sign_in(client, runtime, account_id, level=2)
    handle = _handle_of(runtime, other_device)
    token = factories.csrf(client.get("/account/sessions").text)
    response = client.post(
        "/account/sessions/revoke",
        data={"csrf_token": token, "handle": handle},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert response.status_code == 403
    assert handle in _handles(runtime, account_id)


# JSON API


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_lists_the_accounts_sessions(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2, user_agent="Phone")
    factories.session(runtime, _enrolled(runtime), level=2)
    mine = factories.session(runtime, account_id, level=2)
    response = client.get("/api/v1/sessions", headers=_bearer(mine))
    assert response.status_code == 200
    listed = response.json()["sessions"]
    assert {s["handle"] for s in listed} == {
        _handle_of(runtime, other_device),
        _handle_of(runtime, mine),
    }
    assert [s["current"] for s in listed if s["handle"] == _handle_of(runtime, mine)] == [True]
    assert {
        "handle",
        "user_agent",
        "created_at",
        "last_seen_at",
        "current",
        "signed_in_with",
    } == set(listed[0])
    assert other_device not in response.text and mine not in response.text


def test_api_revokes_only_the_accounts_own_sessions(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    other_device = factories.session(runtime, account_id, level=2)
    victim = _enrolled(runtime)
    victim_handle = _handle_of(runtime, factories.session(runtime, victim, level=2))
    mine = factories.session(runtime, account_id, level=2)

    theirs = client.delete(f"/api/v1/sessions/{victim_handle}", headers=_bearer(mine))
    missing = client.delete(f"/api/v1/sessions/ses_{'B' * 22}", headers=_bearer(mine))
    garbage = client.delete("/api/v1/sessions/%3Cx%3E", headers=_bearer(mine))
    assert theirs.status_code == missing.status_code == garbage.status_code == 404
    # A handle holding control characters is refused at the input boundary, for anyone.
    assert client.delete("/api/v1/sessions/%0d%0aX", headers=_bearer(mine)).status_code == 400
    strip = {"request_id"}
    assert {k: v for k, v in theirs.json().items() if k not in strip} == {
        k: v for k, v in missing.json().items() if k not in strip
    }
    assert _handles(runtime, victim) == {victim_handle}

    handle = _handle_of(runtime, other_device)
    assert client.delete(f"/api/v1/sessions/{handle}", headers=_bearer(mine)).status_code == 204
    assert handle not in _handles(runtime, account_id)
    assert client.get("/api/v1/sessions", headers=_bearer(other_device)).status_code == 401


def test_api_sessions_need_a_finished_sign_in(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    level_one = factories.session(runtime, account_id)
    assert client.get("/api/v1/sessions").status_code == 401
    response = client.get("/api/v1/sessions", headers=_bearer(level_one))
    assert response.status_code == 401
    assert response.json()["detail"] == "A second factor is required."


def test_a_utf8_device_name_is_listed_as_written_not_as_latin1(
    client: TestClient, runtime: Runtime
) -> None:
    # Apps send UTF-8 in User-Agent; read as Starlette hands it over (Latin-1), the
    # patient's list of signed-in devices showed "ZoÃ«â€™s iPhone".
    device = "Zoë\u2019s iPhone"
    signed_up(
        client, "zoe@example.org", "quiet harbour lamp", headers={"User-Agent": device.encode()}
    )
    with runtime.sessions() as db:
        assert db.scalars(select(AuthSession.user_agent)).all() == [device]


def test_a_control_character_spelled_in_utf8_in_a_device_name_is_not_stored(
    client: TestClient, runtime: Runtime
) -> None:
    # U+0085 written as UTF-8 (C2 85) passes the boundary's byte rule for headers.
    signed_up(
        client,
        "zoe@example.org",
        "quiet harbour lamp",
        headers={"User-Agent": "Phone\u0085 1".encode()},
    )
    with runtime.sessions() as db:
        assert db.scalars(select(AuthSession.user_agent)).all() == ["Phone\ufffd 1"]


def test_api_never_acts_on_the_session_cookie(client: TestClient, runtime: Runtime) -> None:
    # A browser signed in to the pages holds the session cookie. The JSON API authenticates
    # by bearer token only: a form another page on the same site posts to an API endpoint
    # without a body (no JSON content type to stop it) must not act on that cookie.
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=1)
    assert client.get("/mfa/enroll").status_code == 200  # the cookie works for pages

    with runtime.sessions() as db:
        before = db.get(TotpCredential, account_id)
        assert before is not None
        seed = before.secret_encrypted

    forged = client.post(
        "/api/v1/mfa/totp/enroll",
        content=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert forged.status_code == 401
    assert client.get("/api/v1/sessions").status_code == 401
    with runtime.sessions() as db:
        after = db.get(TotpCredential, account_id)
        assert after is not None and after.secret_encrypted == seed  # not restarted


# A factor change signs out the account's other sessions


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _works(client: TestClient, token: str) -> bool:
    response = client.get("/api/v1/sessions", headers=_bearer(token))
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def _session_count(runtime: Runtime, account_id: str) -> int:
    with runtime.sessions() as db:
        query = select(func.count()).select_from(AuthSession)
        return db.scalar(query.where(AuthSession.account_id == account_id)) or 0


def test_replacing_the_authenticator_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    intruder = factories.session(runtime, account_id, level=2)
    mine = factories.session(runtime, account_id, level=2, stepped_up=True)
    enrolment = client.post("/api/v1/mfa/totp/enroll", headers=_bearer(mine))
    assert enrolment.status_code == 200, enrolment.text
    assert enrolment.json()["replacing"] is True
    code = pyotp.TOTP(enrolment.json()["secret"]).now()
    confirmed = client.post("/api/v1/mfa/totp/confirm", json={"code": code}, headers=_bearer(mine))
    assert confirmed.status_code == 200, confirmed.text
    assert _works(client, confirmed.json()["session_token"])
    assert not _works(client, intruder)
    assert _session_count(runtime, account_id) == 1
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


def test_regenerating_recovery_codes_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        recovery.regenerate(db, runtime, account_id)
    intruder = factories.session(runtime, account_id, level=2)
    mine = factories.session(runtime, account_id, level=2, stepped_up=True)
    bystander = factories.session(runtime, factories.account(runtime), level=2)
    response = client.post("/api/v1/mfa/recovery-codes", headers=_bearer(mine))
    assert response.status_code == 200, response.text
    assert _works(client, mine)
    assert not _works(client, intruder)
    assert _works(client, bystander)
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


def test_unlinking_a_provider_signs_out_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    link_id = new_id("upi")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(PasswordCredential(account_id=account_id, hash="$argon2id$x", changed_at=now))
        db.add(
            UpstreamIdentity(
                id=link_id,
                account_id=account_id,
                provider="social",
                issuer="https://social.example",
                subject="pat",
                linked_at=now,
            )
        )
    intruder = factories.session(runtime, account_id, level=2)  # signed in through the link
    mine = factories.session(runtime, account_id, level=2, stepped_up=True)
    response = client.delete(f"/api/v1/account/methods/{link_id}", headers=_bearer(mine))
    assert response.status_code == 204, response.text
    assert _works(client, mine)
    assert not _works(client, intruder)
    target = f"account:{account_id}"
    assert ("identity.session.revoke_others", "allowed", target) in _audit(runtime)


def test_sessions_say_how_each_signed_in(client: TestClient, runtime: Runtime) -> None:
    account_id = _enrolled(runtime)
    factories.session(
        runtime, account_id, level=2, user_agent="Phone", first_factor=sessions.upstream("google")
    )
    mine = factories.sign_in(client, runtime, account_id, level=2)
    listed = client.get("/api/v1/sessions", headers=_bearer(mine)).json()["sessions"]
    assert sorted(s["signed_in_with"] for s in listed) == ["password", "upstream:google"]
    page = client.get("/account/sessions")
    assert page.status_code == 200
    assert "Signed in with" in page.text and "Password" in page.text
    assert "google" in page.text  # a provider no longer configured: its name
