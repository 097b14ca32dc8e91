"""``carebridge clients``: OpenID Connect client registration (create, list, show,
rotate-secret, disable). Secrets are printed once and stored as SHA-256 digests."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import clients
from identity.oidc.models import OidcClient

_T = TypeVar("_T")
ACTOR = "operator"


def register(commands: Any) -> None:
    group = add_parser(commands, "clients", "OpenID Connect clients (provider apps).")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    create = add_parser(
        sub, "create", "Register a client; a confidential client's secret is shown once."
    )
    create.add_argument("--name", required=True, help="shown to patients on the consent page")
    create.add_argument("--type", required=True, choices=[clients.CONFIDENTIAL, clients.PUBLIC])
    create.add_argument(
        "--redirect-uri", action="append", default=[], help="exact redirect URI (repeatable)"
    )
    create.add_argument(
        "--scope", action="append", default=[], help="allowed scope(s), space-separated or repeated"
    )
    create.add_argument("--auth-method", choices=list(clients.AUTH_METHODS))
    create.add_argument("--jwks", type=Path, help="public JWK Set file (private_key_jwt)")
    create.add_argument("--post-logout-redirect-uri", action="append", default=[])
    create.add_argument(
        "--backchannel-logout-uri",
        help="where OpenID Connect back-channel logout tokens are POSTed (https)",
    )
    create.add_argument(
        "--first-party",
        action="store_true",
        help="receives the opaque patient ID as sub (verified patients only); no consent page",
    )
    create.add_argument("--sector", help="pairwise sector (default: the redirect URIs' host)")
    create.add_argument("--access-token-seconds", type=int)
    create.add_argument("--refresh-token-seconds", type=int)
    create.set_defaults(handler=create_client)
    listing = add_parser(sub, "list", "List clients.")
    listing.set_defaults(handler=list_clients)
    for name, help_text, handler in (
        ("show", "Show one client's registration.", show_client),
        ("rotate-secret", "Replace a client's secret (the old one stops at once).", rotate),
        ("disable", "Disable a client and revoke its refresh tokens.", disable),
    ):
        parser = add_parser(sub, name, help_text)
        parser.add_argument("client_id", metavar="CLIENT_ID")
        parser.set_defaults(handler=handler)


def _with_runtime(operation: Callable[[Runtime], _T]) -> _T:
    rt = runtime()
    try:
        require_current_schema(rt)
        return operation(rt)
    except clients.ClientError as exc:
        raise CommandError(str(exc)) from None
    finally:
        rt.close()


def _audit(db: Any, action: str, client_id: str) -> None:
    audit.append(
        db, actor=ACTOR, action=action, outcome=Outcome.ALLOWED, target=f"client:{client_id}"
    )


def create_client(args: argparse.Namespace) -> int:
    scopes = [item for value in args.scope for item in value.split()]
    jwks = None
    if args.jwks is not None:
        try:
            jwks = json.loads(args.jwks.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CommandError(f"--jwks {args.jwks}: not a readable JSON file") from None

    def operation(rt: Runtime) -> clients.Created:
        with transaction(rt.sessions) as db:
            created = clients.create(
                db,
                rt.settings,
                name=args.name,
                client_type=args.type,
                redirect_uris=args.redirect_uri,
                scopes=scopes,
                auth_method=args.auth_method,
                jwks=jwks,
                post_logout_redirect_uris=args.post_logout_redirect_uri,
                first_party=args.first_party,
                sector=args.sector,
                access_token_seconds=args.access_token_seconds,
                refresh_token_seconds=args.refresh_token_seconds,
                backchannel_logout_uri=args.backchannel_logout_uri,
            )
            _audit(db, "identity.oidc.client.create", created.client_id)
        return created

    created = _with_runtime(operation)
    print(f"client_id:     {created.client_id}")
    if created.secret:
        print(f"client_secret: {created.secret}")
        print("the secret is shown only this once; it is stored hashed")
    return 0


def _describe(row: OidcClient) -> list[str]:
    return [
        f"client_id:      {row.client_id}",
        f"name:           {row.name}",
        f"type:           {row.client_type} ({row.token_endpoint_auth_method})",
        f"status:         {'disabled' if row.disabled_at else 'enabled'}",
        f"first party:    {'yes' if row.first_party else 'no'}",
        f"sector:         {row.sector}",
        f"scopes:         {row.scopes}",
        f"redirect URIs:  {row.redirect_uris}",
        f"logout URIs:    {row.post_logout_redirect_uris or '-'}",
        f"back-channel:   {row.backchannel_logout_uri or '-'}",
        f"access token:   {row.access_token_seconds or 'default'} s",
        f"refresh token:  {row.refresh_token_seconds or 'default'} s",
        f"created:        {row.created_at:%Y-%m-%d %H:%M:%S}",
    ]


def list_clients(args: argparse.Namespace) -> int:
    def operation(rt: Runtime) -> list[OidcClient]:
        with rt.sessions() as db:
            return clients.all_clients(db)

    rows = _with_runtime(operation)
    for row in rows:
        status = "disabled" if row.disabled_at else "enabled"
        print(f"{row.client_id}  {row.client_type:12}  {status:8}  {row.name}")
    if not rows:
        print("no clients")
    return 0


def show_client(args: argparse.Namespace) -> int:
    def operation(rt: Runtime) -> OidcClient | None:
        with rt.sessions() as db:
            return db.get(OidcClient, args.client_id)

    row = _with_runtime(operation)
    if row is None:
        raise CommandError(f"no client {args.client_id}")
    print("\n".join(_describe(row)))
    return 0


def rotate(args: argparse.Namespace) -> int:
    def operation(rt: Runtime) -> str:
        with transaction(rt.sessions) as db:
            secret = clients.rotate_secret(db, args.client_id)
            _audit(db, "identity.oidc.client.rotate_secret", args.client_id)
        return secret

    secret = _with_runtime(operation)
    print(f"client_secret: {secret}")
    print("the secret is shown only this once; the previous one no longer works")
    return 0


def disable(args: argparse.Namespace) -> int:
    def operation(rt: Runtime) -> bool:
        with transaction(rt.sessions) as db:
            changed = clients.disable(db, args.client_id)
            if changed:
                _audit(db, "identity.oidc.client.disable", args.client_id)
        return changed

    changed = _with_runtime(operation)
    print(f"client {args.client_id} {'disabled' if changed else 'was already disabled'}")
    return 0
