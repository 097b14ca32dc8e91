"""The token grants (RFC 6749 §4.1, §4.4, §6), extended where RFC 9700 asks more than
Authlib does: atomic single-use codes, rotated refresh tokens with reuse detection and
family revocation; and the OpenID Connect extension of the code grant (the ID token).
PKCE is in :mod:`identity.oidc.pkce`, client assertions in
:mod:`identity.oidc.client_assertions`.

A grant asks the database through its server's ``execution``
(:mod:`identity.oidc.execution`): how the request runs, said by whoever runs it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, cast

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, grants
from authlib.oidc.core import grants as oidc_grants
from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import DirectStatement
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.models import new_id
from identity.oidc import pkce, tokens, withdrawals
from identity.oidc import scopes as scope_rules
from identity.oidc.clients import Client
from identity.oidc.execution import Execution
from identity.oidc.models import OidcAuthorizationCode
from identity.oidc.tokens import AccountState, Authorizing, EndUser

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
# The one response mode (OAuth 2.0 Multiple Response Types §2.1), as discovery advertises.
RESPONSE_MODE = "query"


class Provider(Protocol):
    """What a grant reads of its server (identity.oidc.server.AuthorizationServer)."""

    runtime: Runtime
    execution: Execution


_CODES = cast(Table, OidcAuthorizationCode.__table__)
# Built once (see identity.oidc.tokens): the code exchange is a hot path.
# The code, and its account's state (AccountState) in the same statement.
_FIND_CODE = DirectStatement(
    tokens.with_account_state(_CODES).where(_CODES.c.code_hash == bindparam("code_hash"))
)

# What a grant reads first: its statement and values (None: nothing to find).
Lookup = tuple[DirectStatement, dict[str, Any]]


def code_lookup(code: str) -> Lookup | None:
    """The authorization code's row, with its account's state."""
    if len(code) > 128:
        return None
    return _FIND_CODE, {"code_hash": tokens.digest(code)}


def refresh_lookup(refresh_token: str) -> Lookup | None:
    """The refresh token's row, with its account's state."""
    if len(refresh_token) > 128:
        return None
    return tokens.FIND_REFRESH_WITH_ACCOUNT, {"token_hash": tokens.digest(refresh_token)}


# For a grant answered on the event loop (identity.oidc.token_fast_path): the form
# parameter holding what it looks up, and the lookup, fetched before Authlib runs.
LOOKUPS = {
    "authorization_code": ("code", code_lookup),
    "refresh_token": ("refresh_token", refresh_lookup),
}


def end_user(
    server: Provider, record: CodeRecord | RefreshRecord, client: Client
) -> EndUser | None:
    """The person a code or refresh token is for, as ``client`` sees them (tokens.end_user)."""
    return tokens.end_user(
        server.execution.session,
        server.runtime,
        client,
        record.account_id,
        record.auth_time,
        state=record.account,
        grant_id=record.family_id,
    )


def successor(server: Provider, token: dict[str, Any], request: Any) -> dict[str, Any] | None:
    """The row of the refresh token in ``token``, if it has one (tokens.refresh_row)."""
    refresh = token.get("refresh_token")
    if not refresh or request.user is None:
        return None
    if request.refresh_token is not None:
        # RFC 6749 §6: the new refresh token keeps the old one's scope, even when this
        # request narrowed the access token's.
        previous = request.refresh_token
        family, auth_time, scope = previous.family_id, previous.auth_time, previous.scope
    else:
        code: CodeRecord = request.authorization_code
        family, auth_time, scope = code.family_id, code.auth_time, token["scope"]
    return tokens.refresh_row(
        server.runtime,
        request.client,
        token=refresh,
        family_id=family,
        account_id=request.user.account_id,
        scope=scope,
        auth_time=auth_time,
    )


# Grants


@dataclass(frozen=True)
class CodeRecord:
    """An authorization code row, as Authlib's grant and OpenID extension read it."""

    code_hash: str
    family_id: str
    client_id: str
    account_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    auth_time: datetime
    account: AccountState | None = field(default=None, compare=False)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


def _security_event(server: Provider, action: str, client_id: str, request: Any) -> None:
    audit.append(
        server.execution.session(),
        actor=f"client:{client_id}",
        action=action,
        outcome=Outcome.DENIED,
        target=f"client:{client_id}",
        request_id=getattr(request, "request_id", None),
    )


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH_METHODS, "none"]
    AUTHORIZATION_CODE_LENGTH = 43

    server: Provider

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        # The query response mode only (discovery says so). Another one (fragment,
        # form_post) would be ignored by Authlib and answered in the query, where the
        # app may not look: refused, to the redirect URI, now that it is known valid.
        # Sent empty, it is treated as omitted, as any optional parameter without a value.
        mode = self.request.payload.data.get("response_mode")
        if mode and mode != RESPONSE_MODE:
            raise InvalidRequestError(
                "Only response_mode=query is supported.",
                state=self.request.payload.state,
                redirect_uri=redirect_uri,
            )
        return redirect_uri

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: Authorizing = request.user
        now = utcnow()
        lifetime = timedelta(seconds=self.server.runtime.settings.authorization_code_seconds)
        data = request.payload.data
        self.server.execution.session().add(
            OidcAuthorizationCode(
                code_hash=tokens.digest(code),
                family_id=new_id("fam"),
                client_id=request.client.client_id,
                account_id=user.account_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                nonce=data.get("nonce"),
                code_challenge=data["code_challenge"],
                code_challenge_method="S256",
                auth_time=user.auth_time,
                created_at=now,
                expires_at=now + lifetime,
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> CodeRecord | None:
        lookup = code_lookup(code)
        row = self.server.execution.read(*lookup) if lookup is not None else None
        if row is None or row.client_id != client.client_id:
            return None
        record = CodeRecord(
            code_hash=row.code_hash,
            family_id=row.family_id,
            client_id=row.client_id,
            account_id=row.account_id,
            redirect_uri=row.redirect_uri,
            scope=row.scope,
            nonce=row.nonce,
            code_challenge=row.code_challenge,
            code_challenge_method=row.code_challenge_method,
            auth_time=row.auth_time,
            account=AccountState.of(row),
        )
        if row.used_at is not None:
            if self._carries_verifier(record):
                self._reused(record)
            else:
                # Someone saw the code, no more: refused and audited, nothing ended.
                _security_event(
                    self.server,
                    "identity.oidc.code.reused_without_verifier",
                    client.client_id,
                    self.request,
                )
            return None
        if row.grant_withdrawn_until is not None:
            return None  # its account was disabled, or the app revoked, since
        if row.expires_at <= utcnow():
            return None
        return record

    def _carries_verifier(self, record: CodeRecord) -> bool:
        """Whether the request holds the code's PKCE verifier, as its redemption had to.

        A used code presented again ends its grant only then: every code has an S256
        challenge (S256CodeChallenge), so whoever redeemed it held the verifier, and a
        second holder means the grant may be stolen (RFC 6749 §4.1.2). A code alone is
        worth nothing: whoever saw one (a log, a browser's history) must not be able to
        end the person's grant with it, whenever they present it. Checked here, before
        Authlib's own check, which runs only for a code not yet used."""
        verifier = self.request.form.get("code_verifier") or ""
        return pkce.matches(verifier, record.code_challenge)

    def _reused(self, record: CodeRecord) -> None:
        # RFC 6749 §4.1.2: a code used twice was stolen; what it gave is withdrawn, its
        # access token included.
        withdrawals.end_family(self.server.execution.session(), record.family_id)
        _security_event(self.server, "identity.oidc.code.reused", record.client_id, self.request)

    def authenticate_user(self, record: CodeRecord) -> EndUser | None:
        return end_user(self.server, record, self.request.client)

    def save_token(self, token: dict[str, Any]) -> None:
        # The single use itself, with the refresh token it gives: of two exchanges racing,
        # one marks the code used (and stores its refresh token), the other is refused.
        record: CodeRecord = self.request.authorization_code
        follower = successor(self.server, token, self.request)
        if not self.server.execution.redeem("authorization_code", record.code_hash, follower):
            self._reused(record)
            raise InvalidGrantError("The code was already used.")

    def delete_authorization_code(self, record: CodeRecord) -> None:
        """Kept, marked used, until it expires: a second use must be recognised."""


class OpenIDCode(oidc_grants.OpenIDCode):  # type: ignore[misc]
    """The ID token of a code grant. Authlib registers one extension for every grant;
    some of its callbacks (``generate_user_info``) get no request, so each grant gets its
    own, which asks the database through the grant's server (:meth:`__call__`)."""

    def __init__(self, runtime: Runtime, grant: Any = None) -> None:
        super().__init__(require_nonce=False)
        self.runtime = runtime
        self.grant = grant

    def __call__(self, grant: Any) -> None:
        if self.grant is None:
            OpenIDCode(self.runtime, grant)(grant)
            return
        super().__call__(grant)

    def _session(self) -> Session:
        # The grant's server at the time of asking: a grant validated in one transaction
        # may be answered in the next (identity.oidc.authorize).
        server: Provider = self.grant.server
        return server.execution.session()

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        query = select(OidcAuthorizationCode.code_hash).where(
            OidcAuthorizationCode.client_id == request.payload.client_id,
            OidcAuthorizationCode.nonce == nonce,
        )
        return self._session().execute(query.limit(1)).first() is not None

    def resolve_client_private_key(self, client: Client) -> Any:
        # Only the active key signs; all keys are published (a KeySet would pick any).
        return self.runtime.keyring.active_signing_key.key

    def get_client_algorithm(self, client: Client) -> str:
        return self.runtime.keyring.active_signing_key.alg

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self.runtime.keyring.active_signing_key
        return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.runtime.settings.issuer,
            "aud": [client.client_id],
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.runtime.settings.id_token_seconds,
        }

    def generate_user_info(self, user: EndUser, scope: str) -> dict[str, Any]:
        return tokens.user_claims(self._session, self.runtime, user, scope)


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    client_id: str
    account_id: str
    scope: str
    auth_time: datetime
    issued_at: datetime
    expires_at: datetime
    revoked: bool
    account: AccountState | None = field(default=None, compare=False)

    @classmethod
    def of(cls, row: Any, account: AccountState | None = None) -> RefreshRecord:
        return cls(
            token_hash=row.token_hash,
            family_id=row.family_id,
            client_id=row.client_id,
            account_id=row.account_id,
            scope=row.scope,
            auth_time=row.auth_time,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            revoked=(
                row.revoked_at is not None
                or row.used_at is not None
                or row.grant_withdrawn_until is not None
            ),
            account=account,
        )

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return self.revoked


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH_METHODS, "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    server: Provider

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        lookup = refresh_lookup(refresh_token)
        row = self.server.execution.read(*lookup) if lookup is not None else None
        # A withdrawn grant: its tokens were revoked, or this one was stored by an
        # exchange racing the withdrawal.
        if row is None or row.revoked_at is not None or row.grant_withdrawn_until is not None:
            return None
        record = RefreshRecord.of(row, AccountState.of(row))
        if row.used_at is not None:
            self._reused(record)
            return None
        if record.is_expired():
            return None
        return record

    def _reused(self, record: RefreshRecord) -> None:
        # RFC 9700 §4.14.2: a rotated token presented again means one copy leaked: the
        # family ends, the access tokens it gave included. Before the client is checked,
        # on purpose: unlike a code, a refresh token is a bearer secret that never sits
        # in a URL, so whoever holds a used one stole it, whichever client they claim.
        withdrawals.end_family(self.server.execution.session(), record.family_id)
        _security_event(self.server, "identity.oidc.refresh.reused", record.client_id, self.request)

    def authenticate_user(self, record: RefreshRecord) -> EndUser | None:
        return end_user(self.server, record, self.request.client)

    def save_token(self, token: dict[str, Any]) -> None:
        # Rotation: the token is marked used and its successor stored together; of two
        # uses racing, the second is refused and revokes the family (RFC 9700 §4.14.2).
        record: RefreshRecord = self.request.refresh_token
        follower = successor(self.server, token, self.request)
        if not self.server.execution.redeem("refresh_token", record.token_hash, follower):
            self._reused(record)
            raise InvalidGrantError("The refresh token was already used.")

    def revoke_old_credential(self, record: RefreshRecord) -> None:
        """Already marked used by save_token."""

    def issue_token(self, user: EndUser, record: RefreshRecord) -> dict[str, Any]:
        scope = self.request.payload.scope or record.scope
        token: dict[str, Any] = self.generate_token(
            user=user, scope=scope, include_refresh_token=False
        )
        # Whether the grant goes on is the original grant's call, not this request's scope.
        if scope_rules.OFFLINE_ACCESS in record.scope.split():
            token["refresh_token"] = tokens.new_token()
        return token


class ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client: Client = self.request.client
        requested = scope_rules.split(self.request.payload.scope)
        eligible = scope_rules.API_SCOPES | scope_rules.CLIENT_ONLY_SCOPES
        if not requested:
            requested = sorted(scope for scope in client.scopes if scope in eligible)
        for scope in requested:
            # No patient data without a patient's grant: person scopes are refused here.
            if scope not in eligible or scope not in client.scopes:
                raise InvalidScopeError()
        self.request.scope = " ".join(requested)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
