"""The sign-in state machine and the return-path check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import authn, sessions
from identity.authn import Step
from identity.models import Account, TotpCredential, new_id
from tests.identity import factories


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "http:/evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
        "",
        None,
    ],
)
def test_open_redirect_targets_fall_back_to_the_default(target: str | None) -> None:
    assert authn.safe_next(target) == "/account"


@pytest.mark.parametrize("target", ["/account", "/threads/t_1?tab=unread", "/l/abc#x"])
def test_same_site_paths_are_kept(target: str) -> None:
    assert authn.safe_next(target) == target


def test_steps_follow_the_factors_an_account_has(runtime: Runtime) -> None:
    account_id = new_id("acc")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(Account(id=account_id, created_at=now, status="active"))
        assert authn.next_step(db, runtime, None) is Step.SIGN_IN
        db.flush()
        lock = factories.lock(db, account_id)
        first = sessions.start(db, runtime, lock, level=1, first_factor=sessions.PASSWORD).session
        assert authn.next_step(db, runtime, first) is Step.ENROLL  # MFA required by default
        db.add(
            TotpCredential(
                account_id=account_id, secret_encrypted=b"x", created_at=now, confirmed_at=now
            )
        )
        db.flush()
        assert authn.next_step(db, runtime, first) is Step.CHALLENGE
        second = sessions.start(db, runtime, lock, level=2, replacing=first)
        assert authn.next_step(db, runtime, second.session) is Step.DONE
