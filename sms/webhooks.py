"""Twilio's webhooks: message and call status, inbound SMS keywords, call TwiML.

Every request must carry a valid X-Twilio-Signature, computed over the URL Twilio called
(rebuilt from CAREBRIDGE_PUBLIC_BASE_URL, not from the Host header a proxy rewrote) and
the posted parameters, under the auth token, and name this Twilio account (AccountSid).
Unsigned, wrongly signed or another account's: 403, and nothing is read or changed.

Signatures carry no timestamp, so a captured request stays valid for good. Every handler
is therefore safe to replay: a status callback applies only a step forward
(sms.statuses); every inbound message we accept is kept by its MessageSid, for good
(InboundMessage), and a repeat answers like the first and changes nothing. The
signature also covers the parameters only as one string of sorted name+value pairs, so a
captured request can be split differently into the same string; see
:func:`_inbound_fields` and :func:`_error_code` for what keeps us to Twilio's split.

The paths sit under /api/ (carebridge.http.paths.MACHINE_PATHS): no cookies, no CSRF
token (Twilio cannot have one; the signature does that job).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import boundary
from carebridge.http.body import read_bounded
from carebridge.http.problems import Problem
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import backends, delivery, phone, texts, twilio_client
from sms.interfaces import Sender, SendError, TeamNames
from sms.models import ContactPoint, InboundMessage, OptOut, Preferences

log = logging.getLogger("carebridge.sms")

MAX_BODY = 16 * 1024
XML = "application/xml"
_ATTEMPT = re.compile(r"at[0-9a-f]{32}")
_SID = re.compile(r"[A-Z]{2}[0-9a-zA-Z]{32}")
_MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
Params = Mapping[str, Sequence[str]]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def sender_for(request: Request) -> Sender:
    """The app's sender, built once (tests may put their own on app.state.sms_sender)."""
    sender: Sender | None = getattr(request.app.state, "sms_sender", None)
    if sender is None:
        sender = backends.for_settings(_runtime(request).settings)
        request.app.state.sms_sender = sender
    return sender


async def _signed_params(request: Request) -> dict[str, list[str]]:
    """The posted parameters, if Twilio signed them; otherwise a 403 problem."""
    settings = _runtime(request).settings
    body = await read_bounded(request, MAX_BODY, Problem(413, "The request body is too large."))
    params: dict[str, list[str]] = {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        pairs = []
    # The input boundary, but for an SMS's text: a phone may send any character, a 400 would
    # lose the message (a STOP among them: Twilio does not retry), and the text is never
    # stored, only read for a keyword (:func:`_inbound_fields` reads what is not text as
    # spaces).
    boundary.check_pairs((name, value) for name, value in pairs if name != "Body")
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    url = settings.effective_public_base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    token = settings.twilio_auth_token
    signature = request.headers.get("x-twilio-signature", "")
    if token is None or not twilio_client.valid_signature(
        token.get_secret_value(), url, params, signature
    ):
        log.warning("webhook signature refused", extra={"route": request.url.path})
        raise Problem(403, "The request is not signed by Twilio.")
    # Not a secret, so a plain comparison; an unset account SID matches nothing.
    account = settings.twilio_account_sid
    if not account or params.get("AccountSid") != [account]:
        log.warning("webhook for another account refused", extra={"route": request.url.path})
        raise Problem(403, "The request is not for this Twilio account.")
    return params


def _single(params: Params, name: str) -> str:
    """A parameter Twilio sends exactly once; absent or repeated: not Twilio's request."""
    values = params.get(name)
    if values is None or len(values) != 1:
        raise Problem(400, f"The request must carry {name} exactly once.")
    return values[0]


def _one(params: Params, name: str, limit: int = 64) -> str:
    values = params.get(name) or [""]
    return values[0][:limit]


def _xml(twiml: str) -> Response:
    return Response(twiml, media_type=XML)


def _attempt_id(request: Request) -> str:
    attempt_id = str(request.path_params["attempt_id"])
    if not _ATTEMPT.fullmatch(attempt_id):
        raise Problem(404, "No such attempt.")
    return attempt_id


def _error_code(params: Params) -> int | None:
    """Twilio's error code, if it sent one; a callback that hides or garbles it: 400.

    A callback's values are all Twilio's (no text anyone wrote), so a re-split (see
    :func:`_inbound_fields`) can only let one value take in its neighbour's name and
    value: a status or SID taken in or grown matches nothing and changes nothing. An
    ErrorCode can: hidden in the value before it (``ApiVersion=2010-04-01ErrorCode30003``)
    or taking in the name after it (``ErrorCode=30003From+1…``), a transient failure
    (30003, retried) would read as one without a code (final). So ErrorCode is digits,
    and its name stands in the signed string once, as the name, or not at all.
    """
    values = params.get("ErrorCode", [])
    # Counted in the signed string: not in another value, nor a name, nor run across both.
    hidden = _signed_string(params).count("ErrorCode") != (1 if values else 0)
    if hidden or len(values) > 1 or (values and not values[0].isdigit()):
        log.warning("status callback refused: not split as Twilio sends it")
        raise Problem(400, "The request is not a status callback as Twilio sends it.")
    return int(values[0][:8]) if values else None


async def message_status(request: Request) -> Response:
    attempt_id = _attempt_id(request)
    params = await _signed_params(request)
    sid = _one(params, "MessageSid")
    status = _single(params, "MessageStatus")[:16].lower()
    error_code = _error_code(params)
    known = await run_in_threadpool(
        lambda: delivery.apply_status(
            _runtime(request),
            attempt_id,
            sid=sid if _SID.fullmatch(sid) else "",
            status=status,
            error_code=error_code,
            now=utcnow(),
        )
    )
    # 200 either way: Twilio would only retry a callback for an attempt we do not have.
    return Response(status_code=204 if known else 200)


async def call_status(request: Request) -> Response:
    attempt_id = _attempt_id(request)
    params = await _signed_params(request)
    sid = _one(params, "CallSid")
    status = _single(params, "CallStatus")[:16].lower()
    error_code = _error_code(params)
    await run_in_threadpool(
        lambda: delivery.apply_status(
            _runtime(request),
            attempt_id,
            sid=sid if _SID.fullmatch(sid) else "",
            status=status,
            error_code=error_code,
            now=utcnow(),
        )
    )
    return Response(status_code=204)


# Handlers here carry comments, not docstrings: the OpenAPI generator would read a
# docstring as YAML and list Twilio's webhooks with the patients' API.


async def call_twiml(request: Request) -> Response:
    # While detection listens, the call holds silently.
    _attempt_id(request)
    await _signed_params(request)
    return _xml(twilio_client.hold_twiml())


def twiml_for(
    answered_by: str, voicemail_allowed: bool, label: str, callback: str, team: str = ""
) -> str:
    """HHS's model: a name and a number to call back; nothing else, to anyone (the care
    team's name only where the patient's consent in force allows it)."""
    if answered_by == "human":
        return twilio_client.say_twiml(texts.voice_notice(label, callback, team))
    if answered_by in ("machine_end_beep", "machine_end_silence", "machine_end_other"):
        if voicemail_allowed:
            return twilio_client.say_twiml(texts.voice_notice(label, callback, team))
        return twilio_client.hangup_twiml()
    # fax, unknown, machine_start (not a final answer with DetectMessageEnd): end the call.
    return twilio_client.hangup_twiml()


async def call_amd(request: Request) -> Response:
    # Detection's result decides: say the notice, leave a voicemail, or hang up.
    attempt_id = _attempt_id(request)
    params = await _signed_params(request)
    runtime = _runtime(request)
    answered_by = _one(params, "AnsweredBy", 24)
    call_sid = _one(params, "CallSid")
    team_names: TeamNames | None = getattr(request.app.state, "team_names", None)
    context = await run_in_threadpool(
        delivery.call_context, runtime, attempt_id, answered_by, team_names
    )
    if context is None or not _SID.fullmatch(call_sid):
        return Response(status_code=204)
    settings = runtime.settings
    twiml = twiml_for(
        answered_by,
        context.voicemail_allowed,
        settings.sms_sender_label,
        settings.voice_callback_number,
        context.team,
    )
    try:
        await run_in_threadpool(sender_for(request).update_call, call_sid, twiml)
    except SendError as exc:
        # The call goes on holding, then hangs up by itself: nothing was said.
        log.warning("call update failed", extra={"error_kind": exc.kind.value, "code": exc.code})
    return Response(status_code=204)


def _keyword(body: str) -> str:
    words = body.strip().split()
    return words[0].upper().strip(".!") if len(words) == 1 else ""


# Twilio's names for an incoming SMS that hold "From" (the sender and its place,
# https://www.twilio.com/docs/messaging/guides/webhook-request).
_FROM_NAMES = frozenset({"From", "FromCity", "FromCountry", "FromState", "FromZip"})


def _signed_string(params: Params) -> str:
    """The parameters as Twilio's signature covers them: every name and value, sorted by
    name, run together (as RequestValidator builds it, after the URL)."""
    return "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))


@dataclass(frozen=True)
class Inbound:
    """An inbound SMS as far as it concerns us: its SID, sender and text."""

    message_sid: str
    sender: str
    body: str


def _refuse_inbound(reason: str) -> Problem:
    log.warning("inbound webhook refused", extra={"reason": reason})
    return Problem(400, "The request is not an incoming message as Twilio sends it.")


def _inbound_fields(params: Params) -> Inbound:
    """Body, From and MessageSid, read as Twilio split the request (400 if not).

    Twilio signs the URL plus every name and value, sorted by name and run together, so a
    captured request can be split anew into the same signed string: ``Body=CANCEL&ED=``
    signs like the victim's ``Body=CANCELED``. What leaves no other split naming a number
    (From is E.164, or nothing is applied) and a keyword:

    - Every name is given once, and none sorts between Body and From: none of Twilio's
      SMS parameters does (WhatsApp's ButtonText, ChannelMetadata and Forwarded would,
      and our number takes no WhatsApp), so only the sender's text lies there.
    - Every "Body" and "From" in the signed string stands whole in the text or as one
      of Twilio's names (Body, From, FromCity…): counted, not looked for in each value,
      so none may be run across a name and a value either (``ZzF=rom+1415…&romCity=…``).
      Twilio's own values (SIDs, numbers, places, media URLs) never hold them. So the
      Body name is Twilio's, the text ends where Twilio's From begins, and From's value
      is the real sender (a name after it cannot begin inside a number: digits and "+"
      sort before every letter), or no number (``CitySAN FRANCISCO``) and nothing is
      applied. Any other name Twilio sends (media, OptOutType with Advanced Opt-Out,
      ones it adds without notice) passes: it cannot move either end of the text.
    - Every MessageSid we accept is kept (:func:`receive`): any reading of a message we
      have read is a repeat, already done.
    """
    if not all(len(values) == 1 and not "Body" < name < "From" for name, values in params.items()):
        # The names are not logged: a forged one is a piece of the sender's text.
        raise _refuse_inbound("a parameter sent twice, or named as Twilio names none")
    value = {name: values[0] for name, values in params.items()}
    body, sender, sid = value.get("Body"), value.get("From"), value.get("MessageSid")
    if body is None or sender is None or sid is None or not _MESSAGE_SID.fullmatch(sid):
        raise _refuse_inbound("not split as Twilio sends it")
    signed = _signed_string(params)
    from_names = sum(name in _FROM_NAMES for name in value)
    if (
        signed.count("Body") != body.count("Body") + 1
        or signed.count("From") != body.count("From") + from_names
    ):
        raise _refuse_inbound("not split as Twilio sends it")
    text = "".join(c if boundary.is_text(c, multiline=True) else " " for c in body[:160])
    return Inbound(message_sid=sid, sender=sender, body=text)


def receive(runtime: Runtime, message: Inbound) -> bool:
    """Keep the message's SID and, the first time only, apply a STOP or START in it;
    False if the SID was kept before (a repeat: nothing changes)."""
    try:
        return _receive(runtime, message)
    except IntegrityError:
        # A concurrent request committed the same MessageSid (or listed the same number)
        # first: look again, and find it done.
        return _receive(runtime, message)


def _receive(runtime: Runtime, message: Inbound) -> bool:
    keyword = _keyword(message.body)
    now = utcnow()
    with transaction(runtime.sessions) as db:
        if db.get(InboundMessage, message.message_sid) is not None:
            log.warning("inbound message already received", extra={"sid": message.message_sid})
            return False
        # Written first: a concurrent copy of this message waits here, then fails.
        db.add(InboundMessage(message_sid=message.message_sid, received_at=now))
        db.flush()
        # Twilio sends E.164; anything else is not a number we could have texted.
        if (keyword in STOP_WORDS or keyword in START_WORDS) and _E164.fullmatch(message.sender):
            _apply_keyword(db, runtime, message.sender, keyword in STOP_WORDS, now)
    return True


def _apply_keyword(db: Session, runtime: Runtime, e164: str, stop: bool, now: datetime) -> None:
    """STOP words opt the number out (of SMS, for every patient on it); START words opt it
    back in for patients who had opted in before. Audited by contact point, never number."""
    number_hash = phone.number_hash(runtime.keyring, e164)
    listed = db.get(OptOut, number_hash)
    if stop and listed is None:
        db.add(OptOut(number_hash=number_hash, opted_out_at=now, source="keyword"))
    elif not stop and listed is not None:
        db.delete(listed)
    query = select(ContactPoint).where(ContactPoint.number_hash == number_hash)
    matched = list(db.execute(query).scalars())
    for contact in matched:
        prefs = db.get(Preferences, contact.patient_id)
        if prefs is not None:
            if stop:
                prefs.sms_enabled = False
            elif prefs.sms_opted_in_at is not None and contact.verified_at is not None:
                prefs.sms_enabled = True
            prefs.updated_at = now
    for target in [f"contact:{contact.id}" for contact in matched] or ["contact:unknown"]:
        audit.append(
            db,
            actor="twilio",
            action="sms.optout" if stop else "sms.optin",
            outcome=Outcome.ALLOWED,
            target=target,
            request_id=None,
        )


async def inbound(request: Request) -> Response:
    # An SMS to our number. Only single keywords mean anything; the text is not kept.
    params = await _signed_params(request)
    runtime = _runtime(request)
    message = _inbound_fields(params)
    # Kept, and a STOP or START applied, or already done: the answer is the same. Twilio
    # does not retry, and its own opt-out handling confirms to the sender; we add nothing.
    await run_in_threadpool(receive, runtime, message)
    if _keyword(message.body) in HELP_WORDS:
        settings = runtime.settings
        reply = texts.help_sms(settings.sms_sender_label, settings.voice_callback_number)
        return _xml(twilio_client.messaging_twiml(reply))
    return _xml(twilio_client.messaging_twiml(None))


def routes() -> list[BaseRoute]:
    base = "/api/twilio"
    return [
        Route(f"{base}/messages/inbound", inbound, methods=["POST"]),
        Route(f"{base}/messages/{{attempt_id}}/status", message_status, methods=["POST"]),
        Route(f"{base}/calls/{{attempt_id}}/twiml", call_twiml, methods=["POST"]),
        Route(f"{base}/calls/{{attempt_id}}/amd", call_amd, methods=["POST"]),
        Route(f"{base}/calls/{{attempt_id}}/status", call_status, methods=["POST"]),
    ]
