"""Recording a subject: idempotent, and never two accounts behind one
``sub`` (or two ``sub`` for one account and client)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import subjects
from identity.oidc.models import OidcSubject
from tests.identity import factories
from tests.identity.oidc import helpers


def test_recording_a_subject_is_idempotent_and_refuses_another_account(
    runtime: Runtime,
) -> None:
    client_id = helpers.register(runtime).client_id
    someone, other = factories.account(runtime), factories.account(runtime)
    with transaction(runtime.sessions) as db:
        subjects.record(db, client_id=client_id, subject="sub-1", account_id=someone)
        subjects.record(db, client_id=client_id, subject="sub-1", account_id=someone)
    with transaction(runtime.sessions) as db, pytest.raises(ValueError, match="another account"):
        subjects.record(db, client_id=client_id, subject="sub-1", account_id=other)
    # The same account under a second sub with the same client (a changed patient link).
    with transaction(runtime.sessions) as db, pytest.raises(ValueError, match="another account"):
        subjects.record(db, client_id=client_id, subject="sub-2", account_id=someone)
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(OidcSubject)) == 1
        assert subjects.account_for(db, client_id=client_id, subject="sub-1") == someone


def test_a_new_subject_is_recorded(runtime: Runtime) -> None:
    client_id = helpers.register(runtime).client_id
    someone = factories.account(runtime)
    with transaction(runtime.sessions) as db:
        subjects.record(db, client_id=client_id, subject="sub-new", account_id=someone)
    with runtime.sessions() as db:
        assert subjects.account_for(db, client_id=client_id, subject="sub-new") == someone
