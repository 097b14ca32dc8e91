"""Authlib's grants, PKCE, client assertions, revocation and introspection, extended
where RFC 9700 asks more than Authlib does: S256 PKCE for every client, atomic
single-use codes, rotated refresh tokens with reuse detection and family revocation,
private_key_jwt with asymmetric algorithms and jti replay protection only."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import grants as oidc_grants
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import DirectStatement
from carebridge.http import bearer, boundary
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.models import new_id
from identity.oidc import holders, tokens, withdrawals
from identity.oidc import scopes as scope_rules
from identity.oidc.clients import Client
from identity.oidc.context import (
    INTROSPECT_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    connection,
    db,
    plan,
    read,
)
from identity.oidc.models import OidcAuthorizationCode, OidcUsedAssertion
from identity.oidc.tokens import AccountState, Authorizing, EndUser

if TYPE_CHECKING:
    from identity.oidc.server import AuthorizationServer

ASSERTION_ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "EdDSA"]
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
# The one response mode (OAuth 2.0 Multiple Response Types §2.1), as discovery advertises.
RESPONSE_MODE = "query"

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


# For a grant answered on the event loop (AuthorizationServer.answer_on_loop): the form
# parameter holding what it looks up, and the lookup, fetched before Authlib runs.
LOOKUPS = {
    "authorization_code": ("code", code_lookup),
    "refresh_token": ("refresh_token", refresh_lookup),
}


def _redeem(
    kind: Literal["authorization_code", "refresh_token"],
    token_hash: str,
    successor: dict[str, Any] | None,
) -> bool:
    """tokens.redeem in the request's transaction; or, on the event loop, deferred to
    run once Authlib has answered (True here: the claim is checked when it runs, and an
    answer whose claim fails is never sent)."""
    request_plan = plan()
    if request_plan is not None:
        request_plan.defer(*tokens.redemption(request_plan.dialect, kind, token_hash, successor))
        return True
    return tokens.redeem(connection(), kind, token_hash, successor)


# private_key_jwt assertions verify until exp + this (clock skew); their jti is kept as long.
ASSERTION_LEEWAY_SECONDS = 30


# Client authentication: private_key_jwt (RFC 7523 §2.2)

# The one answer to an assertion that does not authenticate its client, whoever it names:
# an unknown client, a client without public keys (secret and public clients) and a bad
# signature cannot be told apart.
ASSERTION_NOT_VALID = "The assertion is not valid."


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY_SECONDS)
        self.runtime = runtime

    def __call__(self, query_client: Callable[[str], Client | None], request: Any) -> Any:
        def registered(client_id: str) -> Client:
            # Authlib says "does not exist" for an unknown client: answer as for a bad
            # signature instead (RFC 7523 §3.2 asks only for invalid_client).
            client = query_client(client_id)
            if client is None:
                raise InvalidClientError(description=ASSERTION_NOT_VALID)
            return client

        return super().__call__(registered, request)

    def get_audiences(self) -> list[str]:
        issuer = self.runtime.settings.issuer
        return [
            issuer,
            f"{issuer}{TOKEN_PATH}",
            f"{issuer}{REVOKE_PATH}",
            f"{issuer}{INTROSPECT_PATH}",
        ]

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, claims = super().extract_assertion(assertion)
        # "none" and HMAC (keyed with a public key) never authenticate a client.
        if headers.get("alg") not in ASSERTION_ALGORITHMS:
            raise InvalidClientError(description="The assertion's algorithm is not accepted.")
        return headers, claims

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            decoded = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except Exception:  # noqa: BLE001  (any failure is the same refusal)
            raise InvalidClientError(description=ASSERTION_NOT_VALID) from None
        exp = decoded.claims.get("exp")
        if not isinstance(exp, int) or exp > time.time() + 600:
            # A long-lived assertion would need its jti remembered for as long.
            raise InvalidClientError(description="The assertion must expire within 10 minutes.")
        self.verify_claims(decoded.claims)
        return decoded.claims

    def resolve_client_public_key(self, client: Client) -> KeySet:
        # A client registered for another method has no keys (joserfc refuses an empty
        # set, which was a 500): the same refusal as a bad signature.
        if client.auth_method != self.CLIENT_AUTH_METHOD or not client.jwks:
            raise InvalidClientError(description=ASSERTION_NOT_VALID)
        try:
            return client.public_keys()
        except (JoseError, ValueError):
            raise InvalidClientError(description=ASSERTION_NOT_VALID) from None

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        # Signed by the client, but a claim all the same: text, or refused before storing.
        if not isinstance(jti, str) or not jti or len(jti) > 255 or not boundary.is_text(jti):
            return False
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        session = db()
        try:
            with session.begin_nested():
                session.add(OidcUsedAssertion(client_id=claims["sub"], jti=jti, expires_at=expires))
        except IntegrityError:
            return False
        return True


# PKCE: S256, for every client (RFC 9700 §2.1.1)

# A code verifier (RFC 7636 §4.1): 43 to 128 unreserved characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send a code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


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


def _security_event(action: str, client_id: str, request: Any) -> None:
    audit.append(
        db(),
        actor=f"client:{client_id}",
        action=action,
        outcome=Outcome.DENIED,
        target=f"client:{client_id}",
        request_id=getattr(request, "request_id", None),
    )


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH_METHODS, "none"]
    AUTHORIZATION_CODE_LENGTH = 43

    server: AuthorizationServer

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
        db().add(
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
        row = read(*lookup) if lookup is not None else None
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
                    "identity.oidc.code.reused_without_verifier", client.client_id, self.request
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
        if not _VERIFIER.fullmatch(verifier):
            return False
        challenge = create_s256_code_challenge(verifier)
        return hmac.compare_digest(challenge.encode(), record.code_challenge.encode())

    def _reused(self, record: CodeRecord) -> None:
        # RFC 6749 §4.1.2: a code used twice was stolen; what it gave is withdrawn, its
        # access token included.
        withdrawals.end_family(db(), record.family_id)
        _security_event("identity.oidc.code.reused", record.client_id, self.request)

    def authenticate_user(self, record: CodeRecord) -> EndUser | None:
        return self.server.end_user(
            self.request.client,
            record.account_id,
            record.auth_time,
            state=record.account,
            grant_id=record.family_id,
        )

    def save_token(self, token: dict[str, Any]) -> None:
        # The single use itself, with the refresh token it gives: of two exchanges racing,
        # one marks the code used (and stores its refresh token), the other is refused.
        record: CodeRecord = self.request.authorization_code
        successor = self.server.successor(token, self.request)
        if not _redeem("authorization_code", record.code_hash, successor):
            self._reused(record)
            raise InvalidGrantError("The code was already used.")

    def delete_authorization_code(self, record: CodeRecord) -> None:
        """Kept, marked used, until it expires: a second use must be recognised."""


class OpenIDCode(oidc_grants.OpenIDCode):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(require_nonce=False)
        self.runtime = runtime

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        query = select(OidcAuthorizationCode.code_hash).where(
            OidcAuthorizationCode.client_id == request.payload.client_id,
            OidcAuthorizationCode.nonce == nonce,
        )
        return db().execute(query.limit(1)).first() is not None

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
        return tokens.user_claims(db, self.runtime, user, scope)


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

    server: AuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        lookup = refresh_lookup(refresh_token)
        row = read(*lookup) if lookup is not None else None
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
        withdrawals.end_family(db(), record.family_id)
        _security_event("identity.oidc.refresh.reused", record.client_id, self.request)

    def authenticate_user(self, record: RefreshRecord) -> EndUser | None:
        return self.server.end_user(
            self.request.client,
            record.account_id,
            record.auth_time,
            state=record.account,
            grant_id=record.family_id,
        )

    def save_token(self, token: dict[str, Any]) -> None:
        # Rotation: the token is marked used and its successor stored together; of two
        # uses racing, the second is refused and revokes the family (RFC 9700 §4.14.2).
        record: RefreshRecord = self.request.refresh_token
        successor = self.server.successor(token, self.request)
        if not _redeem("refresh_token", record.token_hash, successor):
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


# Revocation (RFC 7009) and introspection (RFC 7662)


@dataclass(frozen=True)
class AccessRecord:
    access: bearer.AccessToken
    revoked: bool

    def check_client(self, client: Client) -> bool:
        return self.access.client_id == client.client_id

    def get_scope(self) -> str:
        return " ".join(sorted(self.access.scopes))

    def is_expired(self) -> bool:
        return self.access.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


class _TokenLookup:
    server: AuthorizationServer

    def query_token(self, token: str, hint: str | None) -> RefreshRecord | AccessRecord | None:
        if len(token) > bearer.MAX_TOKEN_LENGTH:
            return None
        if "." in token:
            access = tokens.verify_access_token(self.server.runtime, token)
            if access is None:
                return None
            # Withdrawn, or its account no longer active: inactive (RFC 7662 §2.2).
            return AccessRecord(access, not holders.in_standing(db(), access))
        lookup = refresh_lookup(token)
        row = read(*lookup) if lookup is not None else None
        return RefreshRecord.of(row) if row is not None else None


class Revocation(_TokenLookup, RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH_METHODS, "none"]

    def revoke_token(self, token: RefreshRecord | AccessRecord, request: Any) -> None:
        if isinstance(token, AccessRecord):
            withdrawals.withdraw_token(db(), token.access)
        else:
            # The whole grant goes: its successors and its access tokens too (RFC 7009 §2.1).
            withdrawals.end_family(db(), token.family_id)


class Introspection(_TokenLookup, IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = CLIENT_AUTH_METHODS  # confidential only

    def check_permission(self, token: Any, client: Client, request: Any) -> bool:
        # A client learns about its own tokens only.
        return bool(token.check_client(client))

    def introspect_token(self, token: RefreshRecord | AccessRecord) -> dict[str, Any]:
        issuer = self.server.runtime.settings.issuer
        if isinstance(token, AccessRecord):
            access = token.access
            body = {
                "active": True,
                "token_type": "Bearer",
                "client_id": access.client_id,
                "scope": access.claims.get("scope", ""),
                "sub": access.subject,
                "aud": self.server.runtime.settings.api_audience,
                "iss": issuer,
                "exp": access.expires_at,
                "iat": access.claims.get("iat"),
                "jti": access.jti,
            }
            return body
        return {
            "active": True,
            "token_type": "refresh_token",
            "client_id": token.client_id,
            "scope": token.scope,
            "iss": issuer,
            "exp": int(token.expires_at.timestamp()),
            "iat": int(token.issued_at.timestamp()),
        }
