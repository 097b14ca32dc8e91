"""The order of Twilio's statuses (sms.statuses), against Twilio's documented order written
out here independently: every pair of statuses, legal or not."""

from __future__ import annotations

import itertools

import pytest

from sms.statuses import is_step

# Twilio's documented message order, as stages: a status may follow any of an earlier
# stage (callbacks can be skipped), never one of its own or a later stage.
MESSAGE_STAGES = [
    {"accepted"},
    {"scheduled"},
    {"queued"},
    {"sending"},
    {"sent"},
    {"delivered", "undelivered", "failed"},
    {"read"},
]
# Exceptions to the stages: nothing follows a failure; read only follows a delivery
# (or a status before it); canceling is possible only before sending.
MESSAGE_FINAL = {"undelivered", "failed", "canceled", "read"}
BEFORE_SENDING = {"accepted", "scheduled", "queued"}

CALL_STAGES = [
    {"queued"},
    {"initiated"},
    {"ringing"},
    {"in-progress"},
    {"completed", "busy", "no-answer", "failed", "canceled"},
]
CALL_FINAL = {"completed", "busy", "no-answer", "failed", "canceled"}
NOT_ANSWERED = {"busy", "no-answer", "canceled"}  # cannot end a call that was answered


def stage(stages: list[set[str]], status: str) -> int:
    return next(index for index, members in enumerate(stages) if status in members)


def message_step(current: str | None, status: str) -> bool:
    if current in MESSAGE_FINAL:
        return False
    if status == "canceled":
        return current is None or current in BEFORE_SENDING
    if current is None:
        return True
    return stage(MESSAGE_STAGES, status) > stage(MESSAGE_STAGES, current)


def call_step(current: str | None, status: str) -> bool:
    if current in CALL_FINAL:
        return False
    if current == "in-progress" and status in NOT_ANSWERED:
        return False
    if current is None:
        return True
    return stage(CALL_STAGES, status) > stage(CALL_STAGES, current)


MESSAGE_STATUSES = sorted(set().union(*MESSAGE_STAGES) | {"canceled"})
CALL_STATUSES = sorted(set().union(*CALL_STAGES))


@pytest.mark.parametrize(
    ("current", "status"), list(itertools.product([None, *MESSAGE_STATUSES], MESSAGE_STATUSES))
)
def test_message_steps_follow_twilios_order(current: str | None, status: str) -> None:
    assert is_step("sms", current, status) is message_step(current, status)


@pytest.mark.parametrize(
    ("current", "status"), list(itertools.product([None, *CALL_STATUSES], CALL_STATUSES))
)
def test_call_steps_follow_twilios_order(current: str | None, status: str) -> None:
    assert is_step("voice", current, status) is call_step(current, status)


@pytest.mark.parametrize("status", ["receiving", "received", "partially_delivered", "", "x"])
def test_statuses_of_no_outgoing_message_are_never_a_step(status: str) -> None:
    assert not any(is_step("sms", current, status) for current in [None, *MESSAGE_STATUSES])
    assert not any(is_step("voice", current, status) for current in [None, *CALL_STATUSES])


def test_failed_after_delivered_is_no_step() -> None:
    assert not is_step("sms", "delivered", "failed")
    assert is_step("sms", "delivered", "read")
