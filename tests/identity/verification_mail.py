"""What identity e-mailed, read from the outbox (sealed rows opened with the keyring), and
sign-up done the way a person does it: the code out of the e-mail that was sent."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge import outbox
from carebridge.outbox.queue import open_sealed
from carebridge.runtime import Runtime

CODE = re.compile(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b")
LINK_TOKEN = re.compile(r"/email/confirm\?token=([A-Za-z0-9_-]+)")


def emails_to(runtime: Runtime, address: str) -> list[dict[str, str]]:
    """Every e-mail waiting in the outbox for ``address`` (normalised), oldest first."""
    with runtime.sessions() as db:
        rows = list(
            db.scalars(
                select(outbox.OutboxMessage)
                .where(outbox.OutboxMessage.channel == "email")
                .order_by(outbox.OutboxMessage.created_at, outbox.OutboxMessage.id)
            )
        )
    found = []
    for row in rows:
        if row.sealed is None:
            continue  # delivered already (its content is wiped)
        content = open_sealed(runtime.keyring, row.id, row.channel, row.kind, row.sealed)
        if content["to"] == address:
            found.append(content)
    return found


def last_email_to(runtime: Runtime, address: str) -> dict[str, str]:
    sent = emails_to(runtime, address)
    assert sent, f"nothing was e-mailed to {address}"
    return sent[-1]


def code_in(email: dict[str, str]) -> str:
    match = CODE.search(email["text"])
    assert match, email["text"]
    return match.group(1)


def link_token_in(email: dict[str, str]) -> str:
    match = LINK_TOKEN.search(email["text"])
    assert match, email["text"]
    return match.group(1)


def signed_up(client: TestClient, login: str, password: str, headers: Any = None) -> str:
    """Sign up through the API and type the e-mailed code; returns the session token."""
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    body = {"login": login, "password": password}
    started = client.post("/api/v1/signup", json=body, headers=headers)
    assert started.status_code == 202, started.text
    code = code_in(last_email_to(runtime, login.strip().lower()))
    verified = client.post(
        "/api/v1/email/verify",
        json={"pending_token": started.json()["pending_token"], "code": code},
        headers=headers,
    )
    assert verified.status_code == 200, verified.text
    token: str = verified.json()["session_token"]
    return token
