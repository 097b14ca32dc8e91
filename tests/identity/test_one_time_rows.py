"""The purge of identity's one-time rows: what a rule still reads stays (an open
recovery, a used reset within the "recent reset" window, a change whose 7-day undo still
works, a link not yet expired), the rest goes, in batches. Both databases."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from carebridge import worker
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import one_time_rows, recovery
from identity.flows import reset
from identity.models import EmailChange, EmailVerification, PasswordReset, RecoveryRequest
from tests.identity import factories

DAY = timedelta(days=1)


def _verification(
    row_id: str, account_id: str, created: datetime, **fields: object
) -> EmailVerification:
    return EmailVerification(
        id=row_id,
        account_id=account_id,
        purpose="signin",
        token_hash=row_id.ljust(64, "t"),
        code_hash="c" * 64,
        created_at=created,
        expires_at=created + DAY,
        **fields,
    )


def _reset(row_id: str, account_id: str, created: datetime, **fields: object) -> PasswordReset:
    return PasswordReset(
        id=row_id,
        account_id=account_id,
        secret_hash="s" * 64,
        created_at=created,
        expires_at=created + timedelta(minutes=30),
        **fields,
    )


def _change(row_id: str, account_id: str, created: datetime, **fields: object) -> EmailChange:
    return EmailChange(
        id=row_id,
        account_id=account_id,
        verification_id="ev_" + row_id,
        new_address_hash="n" * 64,
        new_address_encrypted=b"sealed",
        created_at=created,
        **fields,
    )


def _recovery(row_id: str, account_id: str, state: str, **fields: object) -> RecoveryRequest:
    return RecoveryRequest(
        id=row_id,
        account_id=account_id,
        kind="self",
        state=state,
        created_at=utcnow() - 60 * DAY,
        **fields,
    )


def _left(runtime: Runtime) -> set[str]:
    with runtime.sessions() as db:
        return {
            row_id
            for model in (EmailVerification, PasswordReset, EmailChange, RecoveryRequest)
            for row_id in db.scalars(select(model.id))
        }


def test_the_purge_keeps_what_the_rules_read_and_removes_the_rest(runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    # The recovery requests are another account's: an open one keeps its account's
    # used resets (the next test).
    recovering = factories.account(runtime)
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.add_all(
            [
                # Verifications: live, used lately (kept); expired or used long ago (gone).
                _verification("ev_live", account_id, now - timedelta(hours=1)),
                _verification("ev_used_now", account_id, now - DAY, used_at=now),
                _verification("ev_expired", account_id, now - 3 * DAY),
                _verification("ev_used_old", account_id, now - 3 * DAY, used_at=now - 3 * DAY),
                # Resets: a used one within the window recovery reads (kept); an unused
                # expired link and a used one from long ago (gone).
                _reset("prs_used_recent", account_id, now - 6 * DAY, used_at=now - 6 * DAY),
                _reset("prs_unused_old", account_id, now - 3 * DAY),
                _reset("prs_used_old", account_id, now - 40 * DAY, used_at=now - 40 * DAY),
                _reset("prs_live", account_id, now),
                # Changes: completed with its undo still working (kept); pending and
                # past its verification, completed with the undo over (gone).
                _change(
                    "emc_undoable",
                    account_id,
                    now - 6 * DAY,
                    completed_at=now - 6 * DAY,
                    undo_until=now + DAY,
                    old_address_hash="o" * 64,
                    old_address_encrypted=b"sealed-old",
                ),
                _change("emc_pending", account_id, now - timedelta(hours=1)),
                _change("emc_stale", account_id, now - 5 * DAY),
                _change(
                    "emc_undo_over",
                    account_id,
                    now - 10 * DAY,
                    completed_at=now - 10 * DAY,
                    undo_until=now - 3 * DAY,
                ),
                # Recovery requests: open ones stay however old; an ended one goes.
                _recovery("rr_waiting", recovering, recovery.WAITING, wait_until=now - DAY),
                _recovery("rr_started", recovering, recovery.STARTED),
                _recovery("rr_cancel_now", recovering, recovery.CANCELLED, ended_at=now),
                _recovery("rr_done_old", recovering, recovery.COMPLETED, ended_at=now - 3 * DAY),
            ]
        )
    with runtime.sessions() as db:
        last_reset = reset.last_password_reset_at(db, account_id)

    counts = one_time_rows.purge(runtime, now)

    assert _left(runtime) == {
        "ev_live",
        "ev_used_now",
        "prs_used_recent",
        "prs_live",
        "emc_undoable",
        "emc_pending",
        "rr_waiting",
        "rr_started",
        "rr_cancel_now",
    }
    assert counts == {
        "email_verification": 2,
        "password_reset": 2,
        "email_change": 2,
        "recovery_request": 1,
    }
    # The rules read what they read before.
    with runtime.sessions() as db:
        assert reset.last_password_reset_at(db, account_id) == last_reset
    assert one_time_rows.purge(runtime, now) == dict.fromkeys(counts, 0)


def test_the_purge_keeps_a_used_reset_while_its_account_has_an_open_recovery(
    runtime: Runtime,
) -> None:
    # A waiting recovery may be completed long after its wait, and completing it reads
    # every reset since it began: that reset must still be there, however old.
    open_, ended = factories.account(runtime), factories.account(runtime)
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.add_all(
            [
                _recovery("rr_waiting", open_, recovery.WAITING, wait_until=now - 50 * DAY),
                _reset("prs_open", open_, now - 40 * DAY, used_at=now - 40 * DAY),
                _recovery("rr_ended", ended, recovery.CANCELLED, ended_at=now - 3 * DAY),
                _reset("prs_ended", ended, now - 40 * DAY, used_at=now - 40 * DAY),
            ]
        )

    one_time_rows.purge(runtime, now)

    assert _left(runtime) == {"rr_waiting", "prs_open"}


def test_the_purge_works_through_a_backlog_in_batches(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(one_time_rows, "BATCH", 3)
    account_id = factories.account(runtime)
    old = utcnow() - 5 * DAY
    with transaction(runtime.sessions) as db:
        db.add_all([_reset(f"prs_{n}", account_id, old) for n in range(7)])
        db.add(_reset("prs_live", account_id, utcnow()))
    assert one_time_rows.purge(runtime)["password_reset"] == 7
    assert _left(runtime) == {"prs_live"}


def test_the_worker_runs_the_purge(runtime: Runtime) -> None:
    from carebridge.cli.worker import JOBS  # noqa: PLC0415

    (job,) = [job for job in JOBS if job.name == "identity-one-time-purge"]
    account_id = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        db.add(_reset("prs_old", account_id, utcnow() - 5 * DAY))
    assert worker.run_once(runtime, job)
    assert _left(runtime) == set()
