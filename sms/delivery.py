"""The outbox worker: claim due notifications, let the dispatcher decide, send, record.

One notification's way through:

1. **Claim** (one transaction for a small batch). Due rows are locked with ``FOR UPDATE
   SKIP LOCKED`` on PostgreSQL, so workers in parallel never take the same row (SQLite
   runs one worker; its transactions are serialised anyway). The patient's preferences
   row is locked too, so two notifications of one patient are counted against the caps
   one after the other. :func:`sms.dispatcher.decide` rules; its decision and reason are
   stored. For "send", a :class:`SendAttempt` is written and the notification moves to
   ``sending`` with ``next_attempt_at`` = now + the reconcile window, all committed
   *before* Twilio is called.
2. **Send** (no transaction open): wait for the sender's rate-limit slot, call Twilio.
3. **Record**: the SID and ``sent``; or, by error class, a retry with exponential
   backoff and jitter, a permanent stop that also updates the contact point or the
   opt-out list (and a new decision: another channel, or suppressed with the reason).

A worker killed between 1 and 3 leaves the notification ``sending``. If Twilio got the
request, its status callback names the attempt (the attempt ID is in the callback URL)
and completes the record. If nothing arrives within the window, the claim query picks
the notification up again, marks the old attempt ``superseded`` and sends anew; should
the old attempt's callback still arrive after that, the duplicate is logged and audited
(never silent).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.mail import OutboxEmailSender
from carebridge.outbox import RetryPolicy
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity.interfaces import verified_email_of_patient
from sms import consent, contacts, links, preferences, ratelimit, statuses, texts
from sms.dispatcher import (
    DAY,
    NEW_MESSAGE,
    PHONE_VERIFICATION,
    WEEK,
    Action,
    Channel,
    Contact,
    Counts,
    Reason,
    decide,
)
from sms.interfaces import ErrorKind, Sender, SendError, TeamNames, classify
from sms.models import ContactPoint, Notification, OptOut, Preferences, SendAttempt
from sms.recipients import Recipient

log = logging.getLogger("carebridge.sms")

# The outbox's one retry policy (carebridge.outbox.policy), for every channel.
_POLICY = RetryPolicy()
RETRY_BASE = _POLICY.base
RETRY_MAX = _POLICY.cap
_ACTOR = "worker:sms"


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """The outbox's backoff: base·2^(n-1), capped, times a factor in [0.5, 1.5)."""
    return _POLICY.backoff(attempts, rng)


def reconcile_window(settings: Settings) -> timedelta:
    """How long a recorded attempt may go unconfirmed before it is sent again.

    Never shorter than a call to Twilio may take (its timeout, plus the rate-limit wait
    of a batch): a slow call must not look like a dead worker to the others.
    """
    floor = settings.twilio_timeout_seconds + 5.0
    return timedelta(seconds=max(settings.sms_reconcile_seconds, floor))


def status_callback_url(runtime: Runtime, attempt_id: str) -> str:
    return f"{runtime.settings.effective_public_base_url}/api/twilio/messages/{attempt_id}/status"


def call_urls(runtime: Runtime, attempt_id: str) -> tuple[str, str, str]:
    base = f"{runtime.settings.effective_public_base_url}/api/twilio/calls/{attempt_id}"
    return f"{base}/twiml", f"{base}/amd", f"{base}/status"


@dataclass(frozen=True)
class Outgoing:
    """One send, as the claim transaction prepared it (the number and text only in memory)."""

    notification_id: str
    attempt_id: str
    channel: Channel
    to: str
    body: str = ""


def _is_postgres(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(
            Notification.state == "pending",
            or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now),
        ),
        and_(Notification.state == "sending", Notification.next_attempt_at <= now),
    )


@dataclass
class _Inputs:
    """What the dispatcher reads for one batch, loaded in a few queries."""

    prefs: dict[str, Preferences]
    contacts: dict[str, ContactPoint]
    opted_out: set[str]  # number hashes
    # When each recipient's notices of the last week went (oldest first): the caps.
    sent: dict[Recipient, list[datetime]]
    emails: dict[str, str | None]  # patient -> verified address, where e-mail is allowed


def _load_inputs(
    db: Session, runtime: Runtime, batch: list[Notification], now: datetime
) -> _Inputs:
    patients = sorted({row.patient_id for row in batch})
    prefs_query = (
        select(Preferences)
        .where(Preferences.patient_id.in_(patients))
        .order_by(Preferences.patient_id)
    )
    if _is_postgres(db):
        # Caps are counted per patient: two workers must not both count the same past.
        # One lock order (by patient) for every worker: no deadlocks.
        prefs_query = prefs_query.with_for_update()
    prefs = {row.patient_id: row for row in db.scalars(prefs_query)}
    found = db.scalars(
        select(ContactPoint).where(
            ContactPoint.patient_id.in_(patients), ContactPoint.number_hash != contacts.REMOVED
        )
    )
    by_patient = {row.patient_id: row for row in found}
    hashes = [row.number_hash for row in by_patient.values()]
    opted_out = set(db.scalars(select(OptOut.number_hash).where(OptOut.number_hash.in_(hashes))))
    sent_query = (
        select(
            Notification.patient_id, Notification.recipient_account_id, Notification.dispatched_at
        )
        .where(
            Notification.patient_id.in_(patients),
            Notification.kind == NEW_MESSAGE,
            Notification.id.not_in([row.id for row in batch]),
            Notification.dispatched_at >= now - WEEK,
        )
        .order_by(Notification.dispatched_at)
    )
    sent: dict[Recipient, list[datetime]] = {}
    for patient, account, dispatched in db.execute(sent_query).tuples():
        if dispatched is not None:  # the query's condition: for the type checker
            sent.setdefault(Recipient(patient, account), []).append(dispatched)
    # The address is looked up only for those who chose e-mail notices.
    emails = {
        patient: verified_email_of_patient(db, runtime.keyring, patient)
        for patient, row in prefs.items()
        if row.email_enabled
    }
    return _Inputs(prefs, by_patient, opted_out, sent, emails)


def _counts(sent: list[datetime], now: datetime) -> Counts:
    return Counts(
        last_day=sum(1 for moment in sent if moment >= now - DAY),
        last_week=len(sent),
        recent=tuple(sent),
    )


def _merge_pending(db: Session, notification: Notification, now: datetime) -> str:
    """Fold every other waiting notice of the recipient into this one, which is about to
    go: one notice for all the messages since the last. Returns the thread its link
    leads to ("" for the list of threads, when the messages are in several).

    Rows another worker holds are skipped, never waited for (that worker holds them
    before the recipient's lock, which this one holds: waiting could deadlock); it
    decides them after this commits, and finds the cap used."""
    query = select(Notification).where(
        Recipient.of(notification).rows(),
        Notification.kind == NEW_MESSAGE,
        Notification.state == "pending",
        Notification.dispatched_at.is_(None),
        Notification.id != notification.id,
    )
    if _is_postgres(db):
        query = query.with_for_update(skip_locked=True)
    threads = {notification.thread_id or ""}
    for other in db.scalars(query):
        if other.state != "pending":  # decided earlier in this batch (not flushed yet)
            continue
        other.state, other.decision, other.reason = "merged", "merge", Reason.MERGED.value
        other.merged_into, other.next_attempt_at, other.updated_at = notification.id, None, now
        notification.covers += other.covers
        threads.add(other.thread_id or "")
    return threads.pop() if len(threads) == 1 else ""


def _contact_for(inputs: _Inputs, contact: ContactPoint | None) -> Contact | None:
    if contact is None:
        return None
    return Contact(
        verified=contact.verified_at is not None,
        sms_usable=contact.sms_usable,
        voice_usable=contact.voice_usable,
        opted_out=contact.number_hash in inputs.opted_out,
    )


def _supersede(db: Session, notification: Notification, now: datetime) -> None:
    """The current attempt never reported back: it gives way to a new one."""
    if notification.attempt_id is None:
        return
    attempt = db.get(SendAttempt, notification.attempt_id)
    if attempt is not None and attempt.status in ("sending", "unknown"):
        attempt.status = "superseded"
        attempt.finished_at = now
        log.warning(
            "send attempt unconfirmed, sending again",
            extra={"notification": notification.id, "attempt": attempt.id},
        )


def _audit_decisions(db: Session, decided: list[tuple[Notification, str]]) -> None:
    # Appended last, so the audit chain's lock is held for the end of the claim only.
    for notification, decision in decided:
        audit.append(
            db,
            actor=_ACTOR,
            action=f"sms.notification.{decision}",
            outcome=Outcome.ALLOWED if decision == "send" else Outcome.DENIED,
            target=f"notification:{notification.id}",
            request_id=None,
        )
        log.info(
            "notification decided",
            extra={
                "notification": notification.id,
                "decision": decision,
                "reason": notification.reason,
            },
        )


def _team_of(db: Session, team_names: TeamNames | None, thread_id: str) -> str:
    """The care team's name for a notice allowed to carry it: one thread's team only (a
    notice covering several threads names none). Asked now, at send: never stored."""
    if team_names is None or not thread_id:
        return ""
    return team_names.team_name_of_thread(db, thread_id) or ""


def _prepare(
    db: Session,
    runtime: Runtime,
    notification: Notification,
    inputs: _Inputs,
    now: datetime,
    *,
    team_names: TeamNames | None = None,
) -> tuple[str, Outgoing | None]:
    settings = runtime.settings
    if notification.state == "merged":  # covered by a notice decided earlier in the batch
        return "merge", None
    if notification.state == "sending":
        _supersede(db, notification, now)
    notification.updated_at = now
    if RetryPolicy.for_settings(settings).exhausted(notification.attempts):
        notification.state, notification.reason = "failed", "max_attempts"
        notification.next_attempt_at = None
        return "fail", None
    prefs = inputs.prefs.get(notification.patient_id) or preferences.defaults(
        settings, notification.patient_id
    )
    contact = inputs.contacts.get(notification.patient_id)
    if notification.kind == PHONE_VERIFICATION and (
        contact is None or contact.id != notification.contact_point_id
    ):
        contact = None  # the number it was for is gone or replaced
    sent = inputs.sent.setdefault(Recipient.of(notification), [])
    decision = decide(
        notification.kind,
        preferences.for_dispatch(prefs),
        _contact_for(inputs, contact),
        _counts(sent, now),
        now,
        email=inputs.emails.get(notification.patient_id) is not None,
        # Read now, under the preferences lock: a consent withdrawn after the notice
        # was queued already holds for it (rendered at send, never at enqueue).
        level=consent.in_force(prefs),
    )
    notification.decision, notification.reason = decision.action.value, decision.reason.value
    if decision.action is Action.SUPPRESS:
        notification.state, notification.next_attempt_at = "suppressed", None
        return decision.action.value, None
    if decision.action is Action.DEFER:
        notification.state, notification.next_attempt_at = "pending", decision.until
        return decision.action.value, None
    assert decision.channel is not None  # noqa: S101  (SEND comes with a channel)
    thread_id = notification.thread_id or ""
    if notification.kind == NEW_MESSAGE:
        thread_id = _merge_pending(db, notification, now)
        if notification.dispatched_at is None:
            sent.append(now)  # the next one of this recipient in the batch counts this one
    team = _team_of(db, team_names, thread_id) if decision.names_team else ""
    if decision.channel is Channel.EMAIL:
        address = inputs.emails.get(notification.patient_id)
        assert address is not None  # noqa: S101  (the dispatcher chose e-mail: there is one)
        _queue_email(db, runtime, notification, address, thread_id=thread_id, team=team, now=now)
        return decision.action.value, None
    # SEND by phone always comes with a verified contact.
    assert contact is not None  # noqa: S101
    body = ""
    if decision.channel is Channel.SMS:
        label = settings.sms_sender_label
        if notification.kind == PHONE_VERIFICATION:
            body = texts.verification_sms(label, contacts.issue_code(runtime.keyring, contact, now))
        else:
            url = links.create(
                db,
                runtime,
                patient_id=notification.patient_id,
                thread_id=thread_id,
                notification_id=notification.id,
                now=now,
            )
            body = texts.new_message_sms(label, url, notification.covers, team)
    attempt = SendAttempt(
        id=f"at{secrets.token_hex(16)}",
        notification_id=notification.id,
        channel=decision.channel.value,
        status="sending",
        started_at=now,
    )
    db.add(attempt)
    notification.state = "sending"
    notification.channel = decision.channel.value
    notification.attempt_id = attempt.id
    notification.delivery_status = None  # the new attempt's callbacks start from nothing
    notification.attempts += 1
    notification.dispatched_at = notification.dispatched_at or now
    notification.next_attempt_at = now + reconcile_window(settings)
    return decision.action.value, Outgoing(
        notification_id=notification.id,
        attempt_id=attempt.id,
        channel=decision.channel,
        to=contacts.number_of(runtime.keyring, contact),
        body=body,
    )


def _queue_email(
    db: Session,
    runtime: Runtime,
    notification: Notification,
    address: str,
    *,
    thread_id: str,
    team: str,
    now: datetime,
) -> None:
    """The notice by e-mail: queued in the outbox's e-mail channel in this transaction,
    which delivers it (retries, dead letters). Handed over is as far as sms sees it."""
    url = links.create(
        db,
        runtime,
        patient_id=notification.patient_id,
        thread_id=thread_id,
        notification_id=notification.id,
        now=now,
    )
    subject, text = texts.new_message_email(
        runtime.settings.sms_sender_label, url, notification.covers, team
    )
    OutboxEmailSender(runtime).send_email(db, to=address, subject=subject, text=text)
    notification.state, notification.channel = "sent", Channel.EMAIL.value
    notification.attempts += 1
    notification.dispatched_at = notification.dispatched_at or now
    notification.next_attempt_at = None


def claim(
    runtime: Runtime, now: datetime, limit: int, team_names: TeamNames | None = None
) -> tuple[int, list[Outgoing]]:
    """Decide a batch of due notifications; returns how many were taken and what to send.
    ``team_names``: where a notice the patient allowed to name its care team asks the
    name (None: every notice is generic)."""
    with transaction(runtime.sessions) as db:
        query = select(Notification).where(_due(now)).order_by(Notification.created_at)
        query = query.limit(limit)
        if _is_postgres(db):
            query = query.with_for_update(skip_locked=True)
        batch = list(db.execute(query).scalars())
        if not batch:
            return 0, []
        inputs = _load_inputs(db, runtime, batch, now)
        decided: list[tuple[Notification, str]] = []
        outgoing: list[Outgoing] = []
        with db.no_autoflush:
            for row in batch:
                decision, out = _prepare(db, runtime, row, inputs, now, team_names=team_names)
                decided.append((row, decision))
                if out is not None:
                    outgoing.append(out)
        _audit_decisions(db, decided)
    return len(batch), outgoing


def _call(runtime: Runtime, sender: Sender, out: Outgoing) -> str | SendError:
    try:
        if out.channel is Channel.SMS:
            return sender.send_sms(out.to, out.body, status_callback_url(runtime, out.attempt_id))
        twiml, amd, status = call_urls(runtime, out.attempt_id)
        return sender.place_call(out.to, twiml, amd, status)
    except SendError as exc:
        return exc


def send_all(runtime: Runtime, sender: Sender, outgoing: list[Outgoing]) -> None:
    """Make the calls to Twilio that a claim recorded, then record how they went.

    The batch reserves its rate-limit slots in one go, and its outcomes are written in
    one transaction at the end: a worker dying in between leaves them to the status
    callbacks, exactly like a worker dying during a single send. A send whose reconcile
    window is about to run out is skipped (another worker may resend it by then).
    """
    settings = runtime.settings
    began = time.monotonic()
    schedule: list[tuple[float, Outgoing]] = []
    for channel in (Channel.SMS, Channel.VOICE):
        outs = [out for out in outgoing if out.channel is channel]
        if not outs:
            continue
        rate = settings.sms_rate_per_second
        if channel is Channel.VOICE:
            rate = settings.voice_rate_per_second
        first = ratelimit.reserve(
            runtime, f"{channel}:{sender.key}", rate, utcnow(), count=len(outs)
        )
        schedule += [(first + index / rate, out) for index, out in enumerate(outs)]
    schedule.sort(key=lambda item: item[0])
    # Last moment a send may start: the window, less the longest a call to Twilio takes.
    cutoff = began + reconcile_window(settings).total_seconds()
    cutoff -= settings.twilio_timeout_seconds + 2.0
    results: list[Result] = []
    try:
        for offset, out in schedule:
            delay = began + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() > cutoff:
                log.warning("send skipped: window passed", extra={"attempt": out.attempt_id})
                continue
            results.append((out.attempt_id, _call(runtime, sender, out), utcnow()))
    finally:
        record(runtime, results)


def send(runtime: Runtime, sender: Sender, out: Outgoing) -> None:
    send_all(runtime, sender, [out])


# An attempt, Twilio's SID or the error, and when the answer came.
Result = tuple[str, str | SendError, datetime]


def record(runtime: Runtime, results: list[Result]) -> None:
    """Each attempt's outcome (one transaction)."""
    if not results:
        return
    with transaction(runtime.sessions) as db:
        for attempt_id, result, now in results:
            if isinstance(result, SendError):
                _record_failure(
                    db,
                    runtime,
                    attempt_id=attempt_id,
                    kind=result.kind,
                    code=result.code,
                    now=now,
                )
            else:
                _record_sent(db, attempt_id, result, now)


def record_sent(runtime: Runtime, attempt_id: str, sid: str, now: datetime) -> None:
    record(runtime, [(attempt_id, sid, now)])


def record_failure(
    runtime: Runtime, attempt_id: str, kind: ErrorKind, code: int | None, now: datetime
) -> None:
    record(runtime, [(attempt_id, SendError(kind, code=code), now)])


def _record_sent(db: Session, attempt_id: str, sid: str, now: datetime) -> None:
    attempt = db.get(SendAttempt, attempt_id)
    if attempt is None:
        return
    attempt.provider_sid = attempt.provider_sid or sid
    if attempt.status in ("sending", "unknown"):
        attempt.status, attempt.finished_at = "accepted", now
    notification = db.get(Notification, attempt.notification_id)
    # A status callback may have come first; it is never overwritten with less.
    if (
        notification is not None
        and notification.attempt_id == attempt.id
        and notification.state == "sending"
    ):
        notification.state, notification.next_attempt_at = "sent", None
        notification.delivery_status = notification.delivery_status or "queued"
        notification.updated_at = now


def _stop_channel(
    db: Session, notification: Notification, kind: ErrorKind, code: int | None, now: datetime
) -> None:
    """A permanent error: update the number or the opt-out list, then decide again."""
    contact = contacts.of_patient(db, notification.patient_id)
    if contact is not None:
        if kind is ErrorKind.OPTED_OUT:
            if db.get(OptOut, contact.number_hash) is None:
                db.add(OptOut(number_hash=contact.number_hash, opted_out_at=now, source="twilio"))
            prefs = db.get(Preferences, notification.patient_id)
            if prefs is not None:
                prefs.sms_enabled = False
        elif kind is ErrorKind.SMS_UNUSABLE:
            contact.sms_usable, contact.unusable_code = False, code
        elif kind is ErrorKind.VOICE_UNUSABLE:
            contact.voice_usable, contact.unusable_code = False, code
        contact.updated_at = now
        audit.append(
            db,
            actor="twilio",
            action=f"sms.contact.{kind}",
            outcome=Outcome.ALLOWED,
            target=f"contact:{contact.id}",
            request_id=None,
        )
    # The dispatcher sees the change: another channel, or suppressed with the reason.
    notification.state, notification.next_attempt_at = "pending", None


def _fail_notification(
    db: Session,
    runtime: Runtime,
    *,
    notification: Notification,
    kind: ErrorKind,
    code: int | None,
    now: datetime,
) -> None:
    notification.error_code = code
    notification.updated_at = now
    if kind in (ErrorKind.OPTED_OUT, ErrorKind.SMS_UNUSABLE, ErrorKind.VOICE_UNUSABLE):
        _stop_channel(db, notification, kind, code, now)
    elif kind is ErrorKind.FATAL:
        notification.state, notification.next_attempt_at = "failed", None
        notification.reason = "rejected"
    elif RetryPolicy.for_settings(runtime.settings).exhausted(notification.attempts):
        notification.state, notification.next_attempt_at = "failed", None
        notification.reason = "max_attempts"
    elif kind is ErrorKind.UNKNOWN:
        # It may have gone out: stay "sending" until the callback, or until this passes.
        notification.next_attempt_at = now + backoff(notification.attempts)
    else:
        notification.state = "pending"
        notification.next_attempt_at = now + backoff(notification.attempts)
    log.warning(
        "send failed",
        extra={"notification": notification.id, "error_kind": kind.value, "code": code},
    )


def _record_failure(
    db: Session,
    runtime: Runtime,
    *,
    attempt_id: str,
    kind: ErrorKind,
    code: int | None,
    now: datetime,
) -> None:
    attempt = db.get(SendAttempt, attempt_id)
    if attempt is None:
        return
    if attempt.status in ("sending", "unknown"):
        attempt.status = "unknown" if kind is ErrorKind.UNKNOWN else "failed"
        attempt.error_code, attempt.finished_at = code, now
    notification = db.get(Notification, attempt.notification_id)
    if notification is None or notification.attempt_id != attempt.id:
        return
    if notification.state != "sending":
        return
    _fail_notification(db, runtime, notification=notification, kind=kind, code=code, now=now)


def drain(
    runtime: Runtime,
    sender: Sender,
    *,
    clock: Callable[[], datetime] = utcnow,
    max_seconds: float = 5.0,
    team_names: TeamNames | None = None,
) -> int:
    """Deliver what is due, batch after batch, for up to ``max_seconds``; returns how many
    notifications were taken (decided, whatever the decision)."""
    settings = runtime.settings
    # About a second's worth of sends per claim: a crash strands no more than that.
    limit = max(1, min(settings.sms_batch_size, int(settings.sms_rate_per_second)))
    deadline = time.monotonic() + max_seconds
    total = 0
    while time.monotonic() < deadline:
        taken, outgoing = claim(runtime, clock(), limit, team_names)
        send_all(runtime, sender, outgoing)
        total += taken
        if taken == 0:
            break
    return total


# What Twilio tells us afterwards (the webhooks call these)


def _adopt_or_flag(
    db: Session, notification: Notification, attempt: SendAttempt, now: datetime
) -> None:
    """A superseded attempt turned out to have gone through."""
    if notification.state == "pending":
        # Its replacement has not been sent: this one counts, nothing goes twice.
        notification.attempt_id = attempt.id
        notification.state, notification.next_attempt_at = "sent", None
        return
    log.error(
        "notification sent twice",
        extra={"notification": notification.id, "attempt": attempt.id},
    )
    audit.append(
        db,
        actor="twilio",
        action="sms.notification.duplicate",
        outcome=Outcome.FAILED,
        target=f"notification:{notification.id}",
        request_id=None,
    )


def _spoke(db: Session, notification: Notification) -> bool:
    """Whether a completed call said the notice (to a person, or as an allowed voicemail)."""
    attempt = db.get(SendAttempt, notification.attempt_id) if notification.attempt_id else None
    answered_by = attempt.answered_by if attempt is not None else None
    if answered_by == "human":
        return True
    if answered_by and answered_by.startswith("machine_end_"):
        prefs = db.get(Preferences, notification.patient_id)
        return bool(prefs and prefs.voicemail_enabled)
    return False


def _apply_to_notification(
    db: Session,
    runtime: Runtime,
    notification: Notification,
    *,
    status: str,
    error_code: int | None,
    now: datetime,
) -> None:
    # Only a step forward of its current attempt gets here (apply_status).
    notification.delivery_status = status
    notification.updated_at = now
    if status == "completed" and not _spoke(db, notification):
        # Connected, but only to a fax, an unknown, or a machine we left no word on.
        notification.state, notification.next_attempt_at = "undelivered", None
    elif status in ("delivered", "read", "completed"):
        notification.state, notification.next_attempt_at = "delivered", None
    elif status in ("busy", "no-answer", "canceled"):
        # Nobody picked up: the message waits in the portal; calling again is not ours.
        notification.state, notification.next_attempt_at = "undelivered", None
    elif status in ("undelivered", "failed"):
        if notification.state not in ("sending", "sent"):
            return
        # An unknown code on a delivery report is final (400: not a transport problem).
        kind = classify(error_code, 400)
        if kind is ErrorKind.FATAL:
            notification.state, notification.next_attempt_at = "undelivered", None
            notification.error_code = error_code
            return
        notification.state = "sending"  # so the failure is recorded like a send's
        _fail_notification(
            db, runtime, notification=notification, kind=kind, code=error_code, now=now
        )
    elif notification.state == "sending":
        notification.state, notification.next_attempt_at = "sent", None


def apply_status(
    runtime: Runtime,
    attempt_id: str,
    *,
    sid: str,
    status: str,
    error_code: int | None,
    now: datetime,
) -> bool:
    """A message or call status callback; False if it names no attempt of ours.

    A status that is no step forward from the attempt's last one (a repeat, a replay, a
    late callback: ``failed`` after ``delivered``) changes nothing at all (sms.statuses).
    """
    with transaction(runtime.sessions) as db:
        attempt = db.get(SendAttempt, attempt_id)
        if attempt is None:
            return False
        notification = db.get(Notification, attempt.notification_id)
        if notification is None:
            return False
        if not statuses.is_step(attempt.channel, attempt.provider_status, status):
            log.info(
                "status callback ignored: not a step forward",
                extra={"attempt": attempt.id, "status": status[:16]},
            )
            return True
        attempt.provider_status = status
        if attempt.provider_sid is None and sid:
            attempt.provider_sid = sid
        failed = status in ("undelivered", "failed", "busy", "no-answer", "canceled")
        if attempt.status == "superseded" and not failed:
            attempt.status = "accepted"
            _adopt_or_flag(db, notification, attempt, now)
        elif failed and attempt.status != "superseded":
            attempt.status, attempt.error_code = "failed", error_code
            attempt.finished_at = attempt.finished_at or now
        elif attempt.status in ("sending", "unknown"):
            attempt.status, attempt.finished_at = "accepted", now
        if notification.attempt_id == attempt.id:
            _apply_to_notification(
                db, runtime, notification, status=status, error_code=error_code, now=now
            )
    return True


@dataclass(frozen=True)
class CallContext:
    voicemail_allowed: bool
    team: str = ""  # the care team's name, where the consent in force allows it now


def _call_team(
    db: Session, team_names: TeamNames | None, notification: Notification, prefs: Preferences
) -> str:
    """What the call may name, decided as it is spoken (a consent withdrawn while the
    phone rang already holds): one thread's team, under the consent text in force."""
    if consent.in_force(prefs) is not consent.Level.TEAM_NAME or notification.thread_id is None:
        return ""
    merged = db.scalars(
        select(Notification.thread_id).where(Notification.merged_into == notification.id)
    )
    if set(merged) - {notification.thread_id}:
        return ""  # it covers messages of several threads: no one team to name
    return _team_of(db, team_names, notification.thread_id)


def call_context(
    runtime: Runtime, attempt_id: str, answered_by: str, team_names: TeamNames | None = None
) -> CallContext | None:
    """Record who answered a call, say whether a voicemail may be left, and what team
    (if any) it may name."""
    with transaction(runtime.sessions) as db:
        attempt = db.get(SendAttempt, attempt_id)
        if attempt is None or attempt.channel != Channel.VOICE.value:
            return None
        attempt.answered_by = answered_by[:24]
        notification = db.get(Notification, attempt.notification_id)
        if notification is None:
            return None
        prefs = db.get(Preferences, notification.patient_id)
        if prefs is None:
            return CallContext(voicemail_allowed=False)
        return CallContext(
            voicemail_allowed=prefs.voicemail_enabled,
            team=_call_team(db, team_names, notification, prefs),
        )
