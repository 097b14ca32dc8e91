"""The worker's hourly clean-up of what the provider keeps only until it expires: used
and expired codes, dead refresh tokens, remembered assertion IDs, withdrawals.

Codes are kept a day past expiry and refresh tokens a day past death, so a late second
use is still recognised as reuse (and answered as such) rather than as an unknown token.
A grant's withdrawal is kept while its family has refresh tokens stored: one stored by an
exchange racing the withdrawal must stay refused until it is gone.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, exists, or_, select

from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.oidc import client_assertions
from identity.oidc.models import (
    OidcAuthorizationCode,
    OidcRefreshToken,
    OidcUsedAssertion,
    OidcWithdrawal,
)
from identity.oidc.withdrawals import GRANT

GRACE = timedelta(days=1)


def purge_expired(runtime: Runtime) -> None:
    now = utcnow()
    before = now - GRACE
    with runtime.sessions.begin() as db:
        db.execute(delete(OidcAuthorizationCode).where(OidcAuthorizationCode.expires_at < before))
        db.execute(
            delete(OidcRefreshToken).where(
                or_(
                    OidcRefreshToken.expires_at < before,
                    OidcRefreshToken.revoked_at < before,
                )
            )
        )
        # An assertion verifies until exp + the leeway: its jti must be kept that long.
        kept_until = now - timedelta(seconds=client_assertions.ASSERTION_LEEWAY_SECONDS)
        db.execute(delete(OidcUsedAssertion).where(OidcUsedAssertion.expires_at < kept_until))
        family_stored = exists(
            select(OidcRefreshToken.family_id).where(
                OidcRefreshToken.family_id == OidcWithdrawal.value
            )
        )
        db.execute(
            delete(OidcWithdrawal).where(
                OidcWithdrawal.expires_at < now,
                ~((OidcWithdrawal.kind == GRANT) & family_stored),
            )
        )
