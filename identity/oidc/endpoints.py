"""The machine-facing endpoints: token, revocation, introspection, userinfo and the
metadata documents (OpenID Connect Discovery, RFC 8414, SMART App Launch)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carebridge.http import bearer
from carebridge.runtime import Runtime
from identity.oidc import clients, holders, token_fast_path, tokens
from identity.oidc import scopes as scope_rules
from identity.oidc.client_assertions import ASSERTION_ALGORITHMS
from identity.oidc.grants import RESPONSE_MODE
from identity.oidc.paths import (
    AUTHORIZE_PATH,
    END_SESSION_PATH,
    INTROSPECT_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    USERINFO_PATH,
)
from identity.oidc.server import server_for
from identity.oidc.starlette_oauth2 import (
    Answer,
    ParameterError,
    invalid_request,
    read_oauth_form,
)


async def _client_endpoint(request: Request, path: str, name: str | None) -> Response:
    server = server_for(request)
    try:
        form = await read_oauth_form(request)
        oauth = server.oauth2_request(
            request, path, form, with_query=False, authenticates_client=True
        )
    except ParameterError as exc:
        return invalid_request(str(exc))
    if name is None:
        # The usual token requests are answered on the event loop: no thread, no
        # transaction. Anything else (a cache miss included) runs in a transaction.
        answer: Answer = await token_fast_path.token_response(server, oauth)
    else:
        answer = await server.run(lambda bound: bound.create_endpoint_response(name, oauth))
    return answer.response()


async def token(request: Request) -> Response:
    """The token endpoint (RFC 6749 §3.2): authorization_code, refresh_token and
    client_credentials grants; the hot path, so the body is parsed from its bytes."""
    return await _client_endpoint(request, TOKEN_PATH, None)


async def revoke(request: Request) -> Response:
    """Token revocation (RFC 7009)."""
    return await _client_endpoint(request, REVOKE_PATH, "revocation")


async def introspect(request: Request) -> Response:
    """Token introspection (RFC 7662), for confidential clients and their own tokens."""
    return await _client_endpoint(request, INTROSPECT_PATH, "introspection")


async def userinfo(request: Request) -> Response:
    """The UserInfo endpoint (OpenID Connect Core §5.3), written for Starlette: Authlib's
    relies on a Flask/Django-only token lookup."""
    access = bearer.require(request, scope_rules.OPENID)
    runtime: Runtime = request.app.state.runtime
    server = server_for(request)

    def claims() -> dict[str, Any] | None:
        with server.transaction() as (_, db):
            if access.is_client_only:
                return None
            try:
                # Withdrawn (its grant ended, the token revoked) or its account disabled.
                holder = holders.person(db, access)
            except holders.WithdrawnError:
                return None
            client = clients.find(db, access.client_id)
            if holder is None or client is None:
                return None
            account_id = holder.account_id
            auth_time = access.claims.get("auth_time")
            moment = datetime.fromtimestamp(auth_time if isinstance(auth_time, int) else 0, UTC)
            user = tokens.end_user(lambda: db, runtime, client, account_id, moment)
            if user is None:
                return None
            return tokens.user_claims(lambda: db, runtime, user, " ".join(sorted(access.scopes)))

    found = await run_in_threadpool(claims)
    if found is None:
        raise bearer.invalid_token("The access token is no longer valid.")
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


# Metadata


def _scopes_supported() -> list[str]:
    return [*sorted(scope_rules.FIXED), "patient/*.rs", "patient/*.read"]


def _authorization_server(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}{AUTHORIZE_PATH}",
        "token_endpoint": f"{issuer}{TOKEN_PATH}",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "revocation_endpoint": f"{issuer}{REVOKE_PATH}",
        "introspection_endpoint": f"{issuer}{INTROSPECT_PATH}",
        "response_types_supported": ["code"],
        "response_modes_supported": [RESPONSE_MODE],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(clients.AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": list(clients.AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [
            m for m in clients.AUTH_METHODS if m != "none"
        ],
        "scopes_supported": _scopes_supported(),
        "authorization_response_iss_parameter_supported": True,
    }


def _metadata_response(document: dict[str, Any]) -> Response:
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})


async def openid_configuration(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    issuer = runtime.settings.issuer
    document = _authorization_server(issuer)
    document.update(
        {
            "userinfo_endpoint": f"{issuer}{USERINFO_PATH}",
            "end_session_endpoint": f"{issuer}{END_SESSION_PATH}",
            # Back-Channel Logout 1.0 (identity.oidc.backchannel): a logout ends every
            # session of the person at once, so the tokens carry no sid.
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": False,
            "subject_types_supported": ["pairwise", "public"],
            "id_token_signing_alg_values_supported": [runtime.keyring.active_signing_key.alg],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "at_hash",
                "azp",
                "email",
                "email_verified",
                "fhirUser",
            ],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }
    )
    return _metadata_response(document)


async def oauth_authorization_server(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return _metadata_response(_authorization_server(runtime.settings.issuer))


async def smart_configuration(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    issuer = runtime.settings.issuer
    document = {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "authorization_endpoint": f"{issuer}{AUTHORIZE_PATH}",
        "token_endpoint": f"{issuer}{TOKEN_PATH}",
        "userinfo_endpoint": f"{issuer}{USERINFO_PATH}",
        "revocation_endpoint": f"{issuer}{REVOKE_PATH}",
        "introspection_endpoint": f"{issuer}{INTROSPECT_PATH}",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": list(clients.AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": _scopes_supported(),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "permission-offline",
            "permission-patient",
            "sso-openid-connect",
        ],
    }
    return _metadata_response(document)
