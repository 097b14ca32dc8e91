"""The hourly purge keeps what reuse detection still needs and drops the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import purge
from identity.oidc.models import OidcRefreshToken, OidcUsedAssertion, OidcWithdrawal
from tests.identity import factories
from tests.identity.oidc import helpers


def test_purge_drops_dead_rows_after_a_grace_day(runtime: Runtime) -> None:
    registered = helpers.register(runtime)
    account_id = factories.account(runtime)
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=3)
    with transaction(runtime.sessions) as db:
        for name, revoked in (
            ("old", long_ago),
            ("recent", now - timedelta(hours=1)),
            ("live", None),
        ):
            db.add(
                OidcRefreshToken(
                    token_hash=name.ljust(64, "0"),
                    family_id=f"fam_{name}",
                    client_id=registered.client_id,
                    account_id=account_id,
                    scope="openid",
                    auth_time=now,
                    issued_at=long_ago,
                    expires_at=now + timedelta(days=1),
                    revoked_at=revoked,
                )
            )
        db.add(OidcUsedAssertion(client_id="c", jti="old", expires_at=now - timedelta(seconds=31)))
        # Expired, but an assertion still verifies within the leeway: its jti stays.
        db.add(
            OidcUsedAssertion(client_id="c", jti="in-leeway", expires_at=now - timedelta(seconds=1))
        )
        db.add(OidcUsedAssertion(client_id="c", jti="live", expires_at=now + timedelta(minutes=5)))
        expired = now - timedelta(seconds=1)
        for kind, value, until in (
            ("jti", "old", expired),
            ("jti", "live", now + timedelta(minutes=5)),
            ("client", "cli_old", expired),
            ("grant", "fam_gone", expired),
            # Its family still has a refresh token stored: refused until that is purged.
            ("grant", "fam_live", expired),
        ):
            db.add(OidcWithdrawal(kind=kind, value=value, expires_at=until))
    purge.purge_expired(runtime)
    with runtime.sessions() as db:
        families = sorted(db.scalars(select(OidcRefreshToken.family_id)))
        jtis = sorted(db.scalars(select(OidcUsedAssertion.jti)))
        withdrawn = sorted(db.execute(select(OidcWithdrawal.kind, OidcWithdrawal.value)).tuples())
    assert families == ["fam_live", "fam_recent"]
    assert jtis == ["in-leeway", "live"]
    assert withdrawn == [("grant", "fam_live"), ("jti", "live")]
