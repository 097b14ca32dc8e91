"""``carebridge webhooks``: where provider apps hear of events, and what did not arrive.

``add`` and ``rotate`` print the endpoint's signing secret once (the app's receiver
needs it; it is stored sealed and never shown again). ``dead`` lists deliveries that
ran out of attempts or were refused (IDs and reasons only); ``replay`` puts one, or
every one of an endpoint, back in the outbox.
"""

from __future__ import annotations

import argparse
from typing import Any

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.db import transaction
from carebridge.events import endpoints, operations
from identity.interfaces import client_exists

ACTOR = "cli"


def register(commands: Any) -> None:
    group = add_parser(
        commands, "webhooks", "Webhook endpoints of provider apps, and dead letters."
    )
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add = add_parser(sub, "add", "Register an endpoint for a client; prints its secret once.")
    add.add_argument("client_id", metavar="CLIENT_ID")
    add.add_argument("url", metavar="URL")
    add.set_defaults(handler=add_endpoint)
    listing = add_parser(sub, "list", "Endpoints (of one client, or all).")
    listing.add_argument("--client", metavar="CLIENT_ID")
    listing.set_defaults(handler=list_endpoints)
    for name, help_text, handler in (
        (
            "disable",
            "Stop delivering to an endpoint (queued deliveries become dead letters).",
            disable,
        ),
        ("enable", "Deliver to a disabled endpoint again (replay its dead letters after).", enable),
        ("rotate", "A new secret, printed once; the old one signs too during the overlap.", rotate),
    ):
        command = add_parser(sub, name, help_text)
        command.add_argument("endpoint_id", metavar="ENDPOINT_ID")
        command.set_defaults(handler=handler)
    dead = add_parser(sub, "dead", "Dead-lettered deliveries, newest first.")
    dead.add_argument("--endpoint", metavar="ENDPOINT_ID")
    dead.set_defaults(handler=show_dead)
    replay = add_parser(
        sub, "replay", "Deliver a dead letter (obx_...) again, or --all of an endpoint."
    )
    replay.add_argument("target", metavar="DELIVERY_OR_ENDPOINT_ID")
    replay.add_argument("--all", action="store_true", help="every dead letter of the endpoint")
    replay.set_defaults(handler=replay_deliveries)


def add_endpoint(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with transaction(rt.sessions) as db:
            if not client_exists(db, args.client_id):
                raise CommandError(f"no client {args.client_id!r}, or it is disabled")
            try:
                created = endpoints.add(
                    db, rt.keyring, rt.settings, client_id=args.client_id, url=args.url, actor=ACTOR
                )
            except endpoints.EndpointError as exc:
                raise CommandError(str(exc)) from None
    finally:
        rt.close()
    print(
        f"endpoint {created.endpoint.id} for {created.endpoint.client_id}: {created.endpoint.url}"
    )
    print(f"secret (shown once): {created.secret}")
    return 0


def list_endpoints(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with rt.sessions() as db:
            found = endpoints.list_endpoints(db, args.client)
    finally:
        rt.close()
    for endpoint in found:
        state = "enabled" if endpoint.enabled else "disabled"
        rotating = (
            f" (previous secret until {endpoint.rotating_until:%Y-%m-%d %H:%M}Z)"
            if endpoint.rotating_until
            else ""
        )
        print(f"{endpoint.id}  {endpoint.client_id}  {state}  {endpoint.url}{rotating}")
    return 0


def _set(args: argparse.Namespace, *, enabled: bool) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with transaction(rt.sessions) as db:
            try:
                info = endpoints.set_enabled(db, args.endpoint_id, enabled=enabled, actor=ACTOR)
            except endpoints.EndpointError as exc:
                raise CommandError(str(exc)) from None
            # A disabled client's endpoints stay off (rolled back with this error).
            if enabled and not client_exists(db, info.client_id):
                raise CommandError(f"client {info.client_id!r} is disabled")
    finally:
        rt.close()
    print(f"{args.endpoint_id} {'enabled' if enabled else 'disabled'}")
    return 0


def disable(args: argparse.Namespace) -> int:
    return _set(args, enabled=False)


def enable(args: argparse.Namespace) -> int:
    return _set(args, enabled=True)


def rotate(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with transaction(rt.sessions) as db:
            try:
                created = endpoints.rotate(
                    db, rt.keyring, rt.settings, args.endpoint_id, actor=ACTOR
                )
            except endpoints.EndpointError as exc:
                raise CommandError(str(exc)) from None
    finally:
        rt.close()
    print(f"secret (shown once): {created.secret}")
    if created.endpoint.rotating_until is not None:
        print(
            f"the previous secret signs too until {created.endpoint.rotating_until:%Y-%m-%d %H:%M}Z"
        )
    return 0


def show_dead(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with rt.sessions() as db:
            found = operations.dead_deliveries(db, endpoint_id=args.endpoint)
    finally:
        rt.close()
    for dead in found:
        print(
            f"{dead.id}  {dead.endpoint_id}  {dead.event_type}  {dead.event_id}  "
            f"attempts={dead.attempts}  {dead.last_error or '-'}  {dead.failed_at:%Y-%m-%d %H:%M}Z"
        )
    return 0


def replay_deliveries(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        with transaction(rt.sessions) as db:
            if args.all:
                count = operations.replay_endpoint(db, args.target, actor=ACTOR)
            else:
                if not operations.replay(db, args.target, actor=ACTOR):
                    raise CommandError(f"no dead webhook delivery {args.target!r}")
                count = 1
    finally:
        rt.close()
    print(f"{count} deliver{'y' if count == 1 else 'ies'} due again")
    return 0
