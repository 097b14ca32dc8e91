"""``carebridge messaging care-teams ...``: patient-started threads (topics, settings) and
care relationships (start, end, history, roster source and sync). Audited."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamsFollowRoster
from messaging.interfaces import (
    CareTeamError,
    RelationshipError,
    add_topic,
    configure,
    operator_end,
    operator_history,
    operator_start,
    retire_topic,
    route_topic,
    set_roster_source,
    settings_of,
)

_T = TypeVar("_T")
OPERATOR = "operator"
_DURATION = re.compile(r"(\d{1,6})([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """``90m``, ``4h``, ``2d``."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError("a number with m, h or d (90m, 4h, 2d)")
    return timedelta(**{_UNITS[found[2]]: int(found[1])})


def register(teams_sub: Any) -> None:
    """Adds to the ``care-teams`` group of ``carebridge messaging``."""
    show = add_parser(teams_sub, "show", "A team's settings for patient-started threads.")
    show.add_argument("team")
    show.set_defaults(handler=show_team)

    conf = add_parser(teams_sub, "configure", "Whether and how patients may write first.")
    conf.add_argument("team")
    conf.add_argument(
        "--patients-may-start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="patients may start threads (default for a new team: no)",
    )
    conf.add_argument(
        "--auto-reply", help="posted as the team's first reply ('' removes it); no PHI"
    )
    escalation = conf.add_mutually_exclusive_group()
    escalation.add_argument(
        "--escalate-after", type=duration, help="escalate threads unanswered this long (4h, 2d)"
    )
    escalation.add_argument(
        "--no-escalation", action="store_true", help="never escalate (the default)"
    )
    conf.set_defaults(handler=configure_team)

    topic = add_parser(teams_sub, "add-topic", "Offer patients a topic; prints its ID.")
    topic.add_argument("team")
    topic.add_argument("label")
    topic.add_argument(
        "--pool", help="route its patients' threads to this pool ID (default: team-wide)"
    )
    topic.set_defaults(handler=add_team_topic)
    route = add_parser(
        teams_sub, "route-topic", "Route a topic's new patient threads to a pool (or team-wide)."
    )
    route.add_argument("team")
    route.add_argument("topic")
    route.add_argument("--pool", help="the pool ID (omit: the team-wide pool every role sees)")
    route.set_defaults(handler=route_team_topic)
    retire = add_parser(teams_sub, "retire-topic", "Offer a topic no more (threads keep it).")
    retire.add_argument("team")
    retire.add_argument("topic")
    retire.set_defaults(handler=retire_team_topic)

    roster = add_parser(
        teams_sub,
        "set-roster-source",
        "The roster source whose eligible members are the team's patients (after each import).",
    )
    roster.add_argument("team")
    roster.add_argument("source", nargs="?", help="omit to stop following a roster")
    roster.set_defaults(handler=set_team_roster_source)
    sync = add_parser(
        teams_sub, "sync-roster", "Bring the teams fed by a roster source in step with it now."
    )
    sync.add_argument("source")
    sync.set_defaults(handler=sync_team_roster)

    start = add_parser(teams_sub, "add-patient", "Start a care relationship with a patient.")
    start.add_argument("team")
    start.add_argument("patient_id")
    start.set_defaults(handler=add_patient)
    end = add_parser(teams_sub, "end-patient", "End a care relationship (history is kept).")
    end.add_argument("team")
    end.add_argument("patient_id")
    end.add_argument("--reason", required=True, help="why (kept with the record; no PHI)")
    end.set_defaults(handler=end_patient)
    history = add_parser(teams_sub, "relationships", "A team's care relationships, ended too.")
    history.add_argument("team")
    history.add_argument("--patient", help="only this patient ID")
    history.set_defaults(handler=list_relationships)


def _run(operation: Callable[[Runtime], _T]) -> _T:
    rt = runtime()
    try:
        require_current_schema(rt)
        return operation(rt)
    except (CareTeamError, RelationshipError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        rt.close()


def show_team(args: argparse.Namespace) -> int:
    found = _run(lambda rt: settings_of(rt, args.team))
    print(f"patients may start threads: {'yes' if found.patients_may_start else 'no'}")
    print(f"automatic first reply: {found.auto_reply or '(none)'}")
    print(f"escalate after: {found.escalate_after or 'never'}")
    print(f"roster source: {found.roster_source or '(none)'}")
    for topic in found.topics:
        print(f"topic {topic.id}  {topic.label}  (pool: {topic.pool_id or 'team-wide'})")
    return 0


def configure_team(args: argparse.Namespace) -> int:
    _run(
        lambda rt: configure(
            rt,
            args.team,
            actor=OPERATOR,
            patients_may_start=args.patients_may_start,
            auto_reply=args.auto_reply,
            escalate_after=args.escalate_after,
            clear_escalation=args.no_escalation,
        )
    )
    print(f"{args.team} updated")
    return 0


def add_team_topic(args: argparse.Namespace) -> int:
    print(_run(lambda rt: add_topic(rt, args.team, args.label, actor=OPERATOR, pool_id=args.pool)))
    return 0


def route_team_topic(args: argparse.Namespace) -> int:
    _run(lambda rt: route_topic(rt, args.team, args.topic, args.pool, actor=OPERATOR))
    print(f"topic {args.topic} routes to {args.pool or 'the team-wide pool'}")
    return 0


def retire_team_topic(args: argparse.Namespace) -> int:
    _run(lambda rt: retire_topic(rt, args.team, args.topic, actor=OPERATOR))
    print(f"topic {args.topic} is offered no more")
    return 0


def set_team_roster_source(args: argparse.Namespace) -> int:
    _run(lambda rt: set_roster_source(rt, args.team, args.source, actor=OPERATOR))
    print(
        f"{args.team} follows roster {args.source}"
        if args.source
        else f"{args.team} follows no roster"
    )
    return 0


def sync_team_roster(args: argparse.Namespace) -> int:
    _run(lambda rt: CareTeamsFollowRoster(rt).roster_imported(source=args.source))
    print(f"care teams fed by {args.source} are in step with it")
    return 0


def add_patient(args: argparse.Namespace) -> int:
    started = _run(lambda rt: operator_start(rt, args.team, args.patient_id, actor=OPERATOR))
    print("care relationship started" if started else "care relationship already active")
    return 0


def end_patient(args: argparse.Namespace) -> int:
    _run(
        lambda rt: operator_end(rt, args.team, args.patient_id, reason=args.reason, actor=OPERATOR)
    )
    print("care relationship ended")
    return 0


def list_relationships(args: argparse.Namespace) -> int:
    for row in _run(lambda rt: operator_history(rt, args.team, args.patient)):
        ended = (
            f"ended {row.ended_at.isoformat()} by {row.ended_by} ({row.end_reason})"
            if row.ended_at
            else "active"
        )
        print(
            f"{row.id}  {row.patient_id}  {row.source}  "
            f"started {row.created_at.isoformat()} by {row.created_by}  {ended}"
        )
    return 0
