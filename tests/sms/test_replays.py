"""Replayed and re-split Twilio webhooks (issue 17, finding 6): genuinely signed requests
used again, or read differently, change nothing.

Every request here is signed by the real twilio library's RequestValidator under the
test auth token, as Twilio would sign it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import delivery, outbox, phone, webhooks
from sms.backends import ConsoleSender
from sms.models import InboundMessage, Notification, OptOut, Preferences, SendAttempt
from tests.sms.helpers import (
    ACCOUNT_SID,
    FROM_NUMBER,
    INBOUND,
    PUBLIC,
    People,
    as_twilio_sends,
    client_for,
    message_sid,
    post_signed,
    sign,
    verified_number,
)

NUMBER = "+12025550143"
ATTACKER = "+14155550199"
SID = "SM" + "1" * 32
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


@pytest.fixture
def app(runtime: Runtime, console: ConsoleSender) -> Iterator[TestClient]:
    with client_for(runtime) as client:
        client.app.state.sms_sender = console  # type: ignore[attr-defined]
        yield client


def audit_count(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def sms_enabled(runtime: Runtime, patient_id: str) -> bool:
    with runtime.sessions() as db:
        prefs = db.get(Preferences, patient_id)
        assert prefs is not None
        return prefs.sms_enabled


def listed(runtime: Runtime, number: str) -> bool:
    with runtime.sessions() as db:
        return db.get(OptOut, phone.number_hash(runtime.keyring, number)) is not None


def captured(params: dict[str, str]) -> tuple[dict[str, str], str]:
    """A genuine inbound request as someone who can read our traffic keeps it."""
    full = as_twilio_sends(INBOUND, params)
    return full, sign(PUBLIC + INBOUND, full)


def replay(app: TestClient, request: tuple[dict[str, str], str]) -> Any:
    params, signature = request
    return post_signed(app, INBOUND, params, signature=signature, raw=True)


# Inbound keywords: once per MessageSid


def test_replayed_start_after_stop_does_not_resubscribe(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, NUMBER)
    replay(app, captured({"Body": "STOP", "From": NUMBER}))
    start = captured({"Body": "START", "From": NUMBER})
    assert replay(app, start).status_code == 200
    assert sms_enabled(runtime, patient)
    replay(app, captured({"Body": "STOP", "From": NUMBER}))  # the patient's later STOP
    before = audit_count(runtime)

    response = replay(app, start)

    assert response.status_code == 200  # so Twilio would not retry
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text == EMPTY_TWIML
    assert not sms_enabled(runtime, patient)
    assert listed(runtime, NUMBER)
    assert audit_count(runtime) == before


def test_replayed_stop_after_opting_in_again_does_not_silence_the_patient(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, NUMBER)
    stop = captured({"Body": "STOP", "From": NUMBER})
    replay(app, stop)
    # The patient turns texting back on on our page (an explicit opt-in).
    verified_number(runtime, patient, NUMBER, sms_enabled=False)
    verified_number(runtime, patient, NUMBER, sms_enabled=True)
    assert sms_enabled(runtime, patient) and not listed(runtime, NUMBER)

    assert replay(app, stop).status_code == 200

    assert sms_enabled(runtime, patient)
    assert not listed(runtime, NUMBER)


def test_every_received_message_sid_is_kept_without_text_or_number(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    # Not only STOP and START: a text that changed nothing today is kept too, so that no
    # other reading of it (a keyword cut out of it) can change anything later.
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    sids = [message_sid() for _ in range(3)]
    for sid, body in zip(sids, ["STOP", "HELP", "Canceled my appointment"], strict=True):
        replay(app, captured({"Body": body, "From": NUMBER, "MessageSid": sid}))
    with runtime.sessions() as db:
        rows = db.execute(select(InboundMessage.__table__)).mappings().all()
    assert sorted(row["message_sid"] for row in rows) == sorted(sids)
    digits = NUMBER.lstrip("+")
    for row in rows:
        assert set(row) == {"message_sid", "received_at"}
        assert all(digits not in str(value) for value in row.values())


def test_the_same_stop_twice_at_once_is_applied_once(runtime: Runtime, people: People) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    message = webhooks.Inbound(message_sid=message_sid(), sender=NUMBER, body="STOP")
    barrier = threading.Barrier(2)
    applied: list[bool] = []

    def apply() -> None:
        barrier.wait()
        applied.append(webhooks.receive(runtime, message))

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(applied) == [False, True]
    with runtime.sessions() as db:
        optouts = db.scalars(select(AuditRecord).where(AuditRecord.action == "sms.optout")).all()
    assert len(optouts) == 1


# Inbound: this account, and the parameters as Twilio split them


@pytest.mark.parametrize("account", ["AC" + "f" * 32, None, ""])
def test_a_signed_stop_for_another_account_is_refused(
    runtime: Runtime, app: TestClient, people: People, account: str | None
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    before = audit_count(runtime)
    response = post_signed(app, INBOUND, {"Body": "STOP", "From": NUMBER, "AccountSid": account})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sms_enabled(runtime, people["zeb"].patient_id)
    assert not listed(runtime, NUMBER)
    assert audit_count(runtime) == before


def test_a_signed_status_callback_for_another_account_is_refused(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    response = post_signed(
        app,
        f"/api/twilio/messages/{attempt}/status",
        {"MessageSid": SID, "MessageStatus": "delivered", "AccountSid": "AC" + "f" * 32},
    )
    assert response.status_code == 403
    assert snapshot(runtime, attempt)["notification"]["state"] == "sent"


def _resplit(params: dict[str, str]) -> dict[str, str]:
    """``Body=HELP&From=+1…`` as one made-up parameter ``BodyHELPFrom=+1…``."""
    params = dict(params)
    params[f"Body{params.pop('Body')}From"] = params.pop("From")
    return params


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_resplit, id="BodyHELPFrom"),
        pytest.param(lambda p: {k: v for k, v in p.items() if k != "MessageSid"}, id="no-sid"),
        pytest.param(lambda p: {**p, "MessageSid": "SMnot-a-sid"}, id="malformed-sid"),
    ],
)
def test_resplit_parameters_without_a_separate_body_from_and_sid_are_refused(
    runtime: Runtime, app: TestClient, people: People, tamper: Any
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    params, signature = captured({"Body": "HELP", "From": NUMBER})
    forged = tamper(params)
    before = audit_count(runtime)
    response = post_signed(app, INBOUND, forged, raw=True)  # signed as it is
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "<Message>" not in response.text
    assert audit_count(runtime) == before
    if tamper is _resplit:
        # The re-split request carries the very signature Twilio gave the genuine one.
        assert sign(PUBLIC + INBOUND, forged) == signature
        assert replay(app, (forged, signature)).status_code == 400


def _inbound_as_twilio_posts_it(body: str, sender: str, media: int = 0) -> dict[str, str]:
    """Every parameter Twilio posts for an SMS (an MMS with ``media`` items), in its order."""
    sid = ("MM" if media else "SM") + message_sid()[2:]
    params = {
        "ToCountry": "US",
        "ToState": "DC",
        "SmsMessageSid": sid,
        "NumMedia": str(media),
        "ToCity": "",
        "FromZip": "94105",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "SAN FRANCISCO",
        "Body": body,
        "FromCountry": "US",
        "To": FROM_NUMBER,
        "MessagingServiceSid": "MG" + "4" * 32,
        "ToZip": "",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }
    for n in range(media):
        params[f"MediaContentType{n}"] = "image/jpeg"
        params[f"MediaUrl{n}"] = (
            f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}"
            f"/Media/ME{n:032d}"
        )
    return params


def _from_the_victim(genuine: dict[str, str], forgery: str) -> dict[str, str]:
    """The attacker's text, read as Body=STOP and From=<the victim>; the rest of the
    signed string goes into a made-up name, or into FromCity's value."""
    if forgery == "unknown-name":
        return {**genuine, "Body": "STOP", "From": NUMBER, "FromAFrom": ATTACKER}
    city = "X" + "From" + ATTACKER + "FromCity" + genuine["FromCity"]
    return {**genuine, "Body": "STOP", "From": NUMBER, "FromCity": city}


@pytest.mark.parametrize("genuine_first", [True, False], ids=["after-the-text", "instead-of-it"])
@pytest.mark.parametrize("forgery", ["unknown-name", "twilios-names"])
def test_a_body_crafted_to_resplit_into_another_number_does_not_opt_it_out(
    runtime: Runtime, app: TestClient, people: People, forgery: str, genuine_first: bool
) -> None:
    # The attacker texts our number from their own phone, with a crafted text; Twilio
    # signs the request it posts to us, which the attacker captures.
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    text = f"STOPFrom{NUMBER}" + ("FromA" if forgery == "unknown-name" else "FromCityX")
    genuine = _inbound_as_twilio_posts_it(text, ATTACKER)
    signature = sign(PUBLIC + INBOUND, genuine)
    if genuine_first:
        assert post_signed(app, INBOUND, genuine, signature=signature, raw=True).status_code == 200
        assert not listed(runtime, ATTACKER)  # no keyword: nothing happened
    # Split differently, the same signed string reads: Body=STOP, From=<the victim>.
    forged = _from_the_victim(genuine, forgery)
    assert sign(PUBLIC + INBOUND, forged) == signature
    before = audit_count(runtime)

    response = post_signed(app, INBOUND, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert sms_enabled(runtime, victim)
    assert not listed(runtime, NUMBER)
    assert audit_count(runtime) == before


# The victim's own text, a keyword run into more letters: split after the keyword, the rest
# becomes a made-up parameter sorting between Body and From, and the signed string is the
# same. (text, the keyword it starts with)
OPT_OUT_TEXTS = [
    ("CANCELED", "CANCEL"),
    ("ENDED", "END"),
    ("QUITE", "QUIT"),
    ("STOPCALLING", "STOP"),
]
OPT_IN_TEXTS = [("YESDEFINITELY", "YES"), ("STARTED", "START")]


def _resplit_after(params: dict[str, str], keyword: str) -> dict[str, str]:
    """``Body=CANCELED`` as ``Body=CANCEL&ED=``."""
    rest = params["Body"][len(keyword) :]
    return {**params, "Body": keyword, rest: ""}


def _victims_text_resplit(
    app: TestClient, text: str, keyword: str, genuine_first: bool
) -> tuple[dict[str, str], str]:
    genuine = _inbound_as_twilio_posts_it(text, NUMBER)
    signature = sign(PUBLIC + INBOUND, genuine)
    if genuine_first:  # we read the victim's text as it was: not a keyword, nothing done
        assert post_signed(app, INBOUND, genuine, signature=signature, raw=True).status_code == 200
    forged = _resplit_after(genuine, keyword)
    assert sign(PUBLIC + INBOUND, forged) == signature
    return forged, signature


@pytest.mark.parametrize("genuine_first", [True, False], ids=["after-the-text", "instead-of-it"])
@pytest.mark.parametrize("text", OPT_OUT_TEXTS, ids=[text for text, _ in OPT_OUT_TEXTS])
def test_resplit_body_into_an_unknown_parameter_does_not_opt_out(
    runtime: Runtime,
    app: TestClient,
    people: People,
    text: tuple[str, str],
    genuine_first: bool,
) -> None:
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    forged, signature = _victims_text_resplit(app, *text, genuine_first)
    before = audit_count(runtime)

    response = post_signed(app, INBOUND, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sms_enabled(runtime, victim)
    assert not listed(runtime, NUMBER)
    assert audit_count(runtime) == before


@pytest.mark.parametrize("genuine_first", [True, False], ids=["after-the-text", "instead-of-it"])
@pytest.mark.parametrize("text", OPT_IN_TEXTS, ids=[text for text, _ in OPT_IN_TEXTS])
def test_resplit_body_into_an_unknown_parameter_does_not_opt_back_in(
    runtime: Runtime,
    app: TestClient,
    people: People,
    text: tuple[str, str],
    genuine_first: bool,
) -> None:
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    stop = _inbound_as_twilio_posts_it("STOP", NUMBER)
    assert post_signed(app, INBOUND, stop, raw=True).status_code == 200
    assert not sms_enabled(runtime, victim)
    forged, signature = _victims_text_resplit(app, *text, genuine_first)
    before = audit_count(runtime)

    response = post_signed(app, INBOUND, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert not sms_enabled(runtime, victim)
    assert listed(runtime, NUMBER)
    assert audit_count(runtime) == before


def test_resplit_moving_the_start_of_the_text_does_not_opt_out(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    # Only Twilio's parameter names this time: the text's start moves into ApiVersion.
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    genuine = _inbound_as_twilio_posts_it("SomeBody STOP", NUMBER)
    signature = sign(PUBLIC + INBOUND, genuine)
    forged = {**genuine, "ApiVersion": "2010-04-01BodySome", "Body": " STOP"}
    assert sign(PUBLIC + INBOUND, forged) == signature

    response = post_signed(app, INBOUND, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert sms_enabled(runtime, victim)
    assert not listed(runtime, NUMBER)


@pytest.mark.parametrize("keyword", ["STOP", "START"])
def test_a_text_straddling_from_across_a_name_and_a_value_does_not_opt_another_number(
    runtime: Runtime, app: TestClient, people: People, keyword: str
) -> None:
    # The attacker texts our number from their own phone; their text holds the victim's
    # number and a fresh MessageSid. Read anew, Twilio's "From" and its place names are
    # cut into names and values that hold neither word whole: ZzF=rom+1415…,
    # romCity=SAN FRANCISCOF, …, romZip=94105<the rest of the signed string>.
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    if keyword == "START":
        assert post_signed(app, INBOUND, _inbound_as_twilio_posts_it("STOP", NUMBER), raw=True)
        assert not sms_enabled(runtime, victim)
    fresh = message_sid()
    genuine = _inbound_as_twilio_posts_it(f"{keyword}From{NUMBER}MessageSid{fresh}Zz", ATTACKER)
    signature = sign(PUBLIC + INBOUND, genuine)
    assert post_signed(app, INBOUND, genuine, signature=signature, raw=True).status_code == 200
    names = sorted(genuine)
    tail = "".join(n + genuine[n] for n in names[names.index("FromZip") + 1 :])
    forged = {n: genuine[n] for n in names if n < "Body"} | {
        "Body": keyword,
        "From": NUMBER,
        "MessageSid": fresh,
        "ZzF": "rom" + ATTACKER + "F",
        "romCity": genuine["FromCity"] + "F",
        "romCountry": genuine["FromCountry"] + "F",
        "romState": genuine["FromState"] + "F",
        "romZip": genuine["FromZip"] + tail,
    }
    assert sign(PUBLIC + INBOUND, forged) == signature
    before = (sms_enabled(runtime, victim), listed(runtime, NUMBER))

    response = post_signed(app, INBOUND, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert (sms_enabled(runtime, victim), listed(runtime, NUMBER)) == before


def test_another_reading_of_a_message_already_received_is_a_repeat(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    # Whatever a reading of the victim's captured "CANCELED" looks like, it carries its
    # MessageSid, which we kept when we read the text: it is a repeat, already done.
    victim = people["zeb"].patient_id
    verified_number(runtime, victim, NUMBER)
    genuine = _inbound_as_twilio_posts_it("CANCELED", NUMBER)
    assert post_signed(app, INBOUND, genuine, raw=True).status_code == 200
    before = audit_count(runtime)

    response = post_signed(app, INBOUND, {**genuine, "Body": "CANCEL"}, raw=True)

    assert response.status_code == 200
    assert response.text == EMPTY_TWIML
    assert sms_enabled(runtime, victim)
    assert not listed(runtime, NUMBER)
    assert audit_count(runtime) == before


@pytest.mark.parametrize("media", [0, 1, 3], ids=["sms", "mms", "mms-3-items"])
def test_a_genuine_stop_as_twilio_posts_it_is_applied(
    runtime: Runtime, app: TestClient, people: People, media: int
) -> None:
    # Every parameter Twilio sends, texts that mention "From" and "Body": one reading.
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    for words in ("From now on, call me", "Body aches, From Monday"):
        text = _inbound_as_twilio_posts_it(words, NUMBER, media)
        assert post_signed(app, INBOUND, text, raw=True).status_code == 200
    assert not listed(runtime, NUMBER)
    stop = _inbound_as_twilio_posts_it("Stop", NUMBER, media)
    assert post_signed(app, INBOUND, stop, raw=True).status_code == 200
    assert listed(runtime, NUMBER)
    assert not sms_enabled(runtime, people["zeb"].patient_id)


def test_a_stop_with_a_parameter_twilio_added_is_applied(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    # A Messaging Service with Advanced Opt-Out adds OptOutType; Twilio may add others
    # without notice. A name that cannot move either end of the text is let through.
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    stop = {**_inbound_as_twilio_posts_it("STOP", NUMBER), "OptOutType": "STOP"}
    assert post_signed(app, INBOUND, stop, raw=True).status_code == 200
    assert listed(runtime, NUMBER)
    assert not sms_enabled(runtime, people["zeb"].patient_id)


@pytest.mark.parametrize("text", ["STOP\x00", "\x07STOP", "STOP\x85"], ids=["nul", "bel", "c1"])
def test_a_stop_holding_a_control_character_is_applied_not_lost(
    runtime: Runtime, app: TestClient, people: People, text: str
) -> None:
    # A phone may send any character; a 400 would lose the STOP (Twilio does not retry).
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    stop = _inbound_as_twilio_posts_it(text, NUMBER)
    assert post_signed(app, INBOUND, stop, raw=True).status_code == 200
    assert listed(runtime, NUMBER)
    assert not sms_enabled(runtime, people["zeb"].patient_id)


# Status callbacks: never backwards


def sent(runtime: Runtime, patient_id: str, sender: ConsoleSender) -> tuple[str, str]:
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id="t")
    [out] = delivery.claim(runtime, utcnow(), 10)[1]
    delivery.send(runtime, sender, out)
    return ntf, out.attempt_id


def snapshot(runtime: Runtime, attempt_id: str) -> dict[str, Any]:
    with runtime.sessions() as db:
        attempt = db.get(SendAttempt, attempt_id)
        assert attempt is not None
        notification = db.get(Notification, attempt.notification_id)
        assert notification is not None
        count = db.scalar(select(func.count()).select_from(AuditRecord))
        return {
            "attempt": {c.key: getattr(attempt, c.key) for c in SendAttempt.__table__.c},
            "notification": {c.key: getattr(notification, c.key) for c in Notification.__table__.c},
            "audit": count,
            "attempts": db.scalar(select(func.count()).select_from(SendAttempt)),
        }


def callback(app: TestClient, attempt: str, status: str, error: str | None = None) -> int:
    params = {"MessageSid": SID, "MessageStatus": status, "ErrorCode": error}
    return int(post_signed(app, f"/api/twilio/messages/{attempt}/status", params).status_code)


def test_a_replayed_failed_after_delivered_does_not_move_the_attempt_back(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    assert callback(app, attempt, "sent") == 204
    assert callback(app, attempt, "delivered") == 204
    before = snapshot(runtime, attempt)
    assert before["attempt"]["status"] == "accepted"

    assert callback(app, attempt, "failed", "30003") == 204

    after = snapshot(runtime, attempt)
    assert after == before
    assert after["attempt"]["error_code"] is None
    assert after["notification"]["state"] == "delivered"
    delivery.drain(runtime, console)  # and nothing is sent again
    assert snapshot(runtime, attempt)["attempts"] == 1


def _failed_as_twilio_posts_it(code: str) -> dict[str, str]:
    return {
        "SmsSid": SID,
        "SmsStatus": "failed",
        "MessageStatus": "failed",
        "To": NUMBER,
        "MessageSid": SID,
        "AccountSid": ACCOUNT_SID,
        "From": FROM_NUMBER,
        "ApiVersion": "2010-04-01",
        "ErrorCode": code,
    }


# Twilio's own names and values, split so that the error code is hidden in the value
# before it, or takes in the name after it: a failure Twilio calls transient (30003,
# retried) would read as one with no code (final).
ERROR_CODE_RESPLITS = {
    "hidden": lambda p: {
        **{k: v for k, v in p.items() if k != "ErrorCode"},
        "ApiVersion": p["ApiVersion"] + "ErrorCode" + p["ErrorCode"],
    },
    "garbled": lambda p: {
        **{k: v for k, v in p.items() if k != "From"},
        "ErrorCode": p["ErrorCode"] + "From" + p["From"],
    },
    # ErrorCode hidden in a name, and run across a name and a value.
    "in-a-name": lambda p: {
        **{k: v for k, v in p.items() if k not in ("ApiVersion", "ErrorCode")},
        "ApiVersion" + p["ApiVersion"] + "ErrorCode": p["ErrorCode"],
    },
    "across-a-name-and-a-value": lambda p: {
        **{k: v for k, v in p.items() if k not in ("ApiVersion", "ErrorCode")},
        "ApiVersion" + p["ApiVersion"] + "ErrorCod": "e" + p["ErrorCode"],
    },
}


@pytest.mark.parametrize("resplit", list(ERROR_CODE_RESPLITS))
def test_a_resplit_status_callback_does_not_end_the_retries(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender, resplit: str
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    path = f"/api/twilio/messages/{attempt}/status"
    genuine = _failed_as_twilio_posts_it("30003")
    signature = sign(PUBLIC + path, genuine)
    forged = ERROR_CODE_RESPLITS[resplit](genuine)
    assert sign(PUBLIC + path, forged) == signature
    then = snapshot(runtime, attempt)

    response = post_signed(app, path, forged, signature=signature, raw=True)

    assert response.status_code == 400
    assert snapshot(runtime, attempt) == then
    # Twilio's own callback, when it comes, is applied: the notification will be retried.
    assert post_signed(app, path, genuine, signature=signature, raw=True).status_code == 204
    after = snapshot(runtime, attempt)
    assert after["notification"]["state"] == "pending"
    assert after["attempt"]["error_code"] == 30003


# Each step Twilio's order forbids, as a callback after the ones before it.
ILLEGAL_MESSAGE_STEPS = [
    (("sent", "delivered"), "failed"),
    (("sent", "delivered"), "undelivered"),
    (("sent", "delivered"), "sent"),
    (("sent", "delivered"), "sending"),
    (("sent", "delivered"), "queued"),
    (("sent", "delivered", "read"), "delivered"),
    (("sent", "delivered", "read"), "failed"),
    (("sent", "undelivered"), "delivered"),
    (("sent", "undelivered"), "read"),
    (("sent", "failed"), "delivered"),
    (("sent", "failed"), "sent"),
    (("sending",), "queued"),
    (("sending",), "accepted"),
    (("sent",), "sending"),
    (("sent",), "canceled"),
    (("queued", "canceled"), "sent"),
    (("sent",), "receiving"),
]


@pytest.mark.parametrize(
    "step",
    ILLEGAL_MESSAGE_STEPS,
    ids=[f"{late}-after-{before[-1]}" for before, late in ILLEGAL_MESSAGE_STEPS],
)
def test_an_illegal_status_step_changes_nothing(
    runtime: Runtime,
    app: TestClient,
    people: People,
    console: ConsoleSender,
    step: tuple[tuple[str, ...], str],
) -> None:
    before, late = step
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    for status in before:
        assert callback(app, attempt, status, "30006" if status == "undelivered" else None) == 204
    then = snapshot(runtime, attempt)
    assert then["notification"]["delivery_status"] == before[-1]

    assert callback(app, attempt, late, "30003") == 204

    assert snapshot(runtime, attempt) == then


def test_the_same_status_twice_is_applied_once(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    assert callback(app, attempt, "failed", "30003") == 204  # transient: retried later
    then = snapshot(runtime, attempt)
    assert then["notification"]["state"] == "pending"
    assert callback(app, attempt, "failed", "30003") == 204
    assert snapshot(runtime, attempt) == then


@pytest.mark.parametrize(
    "path",
    [
        ("queued", "sending", "sent", "delivered", "read"),
        ("accepted", "queued", "sent", "undelivered"),
        ("scheduled", "queued", "failed"),
        ("delivered",),  # earlier callbacks lost: skipping ahead is fine
    ],
)
def test_statuses_in_twilios_order_are_each_applied(
    runtime: Runtime,
    app: TestClient,
    people: People,
    console: ConsoleSender,
    path: tuple[str, ...],
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    _, attempt = sent(runtime, people["zeb"].patient_id, console)
    for status in path:
        assert callback(app, attempt, status, "30006" if status == "undelivered" else None) == 204
        now = snapshot(runtime, attempt)
        assert now["attempt"]["provider_status"] == status
        assert now["notification"]["delivery_status"] == status
