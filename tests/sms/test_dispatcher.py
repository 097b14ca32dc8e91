"""The one dispatcher: every rule, quiet hours across time zones and DST, caps."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from sms.dispatcher import (
    NEW_MESSAGE,
    PHONE_VERIFICATION,
    UNREACHABLE,
    Action,
    Channel,
    Contact,
    Counts,
    Decision,
    Level,
    Prefs,
    Reason,
    decide,
)
from sms.quiet_hours import quiet_until

NOON_UTC = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
NONE_YET = Counts(last_day=0, last_week=0)
GOOD = Contact(verified=True, sms_usable=True, voice_usable=True, opted_out=False)


def prefs(**changes: object) -> Prefs:
    values: dict[str, object] = {
        "sms_enabled": True,
        "voice_enabled": False,
        "time_zone": "UTC",
        "quiet_start": "21:00",
        "quiet_end": "08:00",
        "daily_cap": 1,
        "weekly_cap": 3,
    }
    values.update(changes)
    return Prefs(**values)  # type: ignore[arg-type]


def contact(**changes: bool) -> Contact:
    values = {"verified": True, "sms_usable": True, "voice_usable": True, "opted_out": False}
    values.update(changes)
    return Contact(**values)


def test_sms_allowed_and_outside_quiet_hours_sends_sms() -> None:
    assert decide(NEW_MESSAGE, prefs(), GOOD, NONE_YET, NOON_UTC) == Decision(
        Action.SEND, Reason.ALLOWED, Channel.SMS
    )


def test_the_defaults_allow_nothing() -> None:
    decision = decide(
        NEW_MESSAGE, prefs(sms_enabled=False, voice_enabled=False), GOOD, NONE_YET, NOON_UTC
    )
    assert decision == Decision(Action.SUPPRESS, Reason.NO_CHANNEL)


def test_voice_only_calls() -> None:
    decision = decide(
        NEW_MESSAGE, prefs(sms_enabled=False, voice_enabled=True), GOOD, NONE_YET, NOON_UTC
    )
    assert (decision.action, decision.channel) == (Action.SEND, Channel.VOICE)


def test_sms_is_preferred_over_voice() -> None:
    decision = decide(NEW_MESSAGE, prefs(voice_enabled=True), GOOD, NONE_YET, NOON_UTC)
    assert decision.channel is Channel.SMS


@pytest.mark.parametrize(
    ("the_contact", "reason"),
    [
        (None, Reason.NO_NUMBER),
        (contact(verified=False), Reason.UNVERIFIED_NUMBER),
        (contact(opted_out=True), Reason.OPTED_OUT),
        (contact(sms_usable=False), Reason.NUMBER_UNUSABLE),
    ],
)
def test_an_unusable_number_suppresses_with_its_reason(
    the_contact: Contact | None, reason: Reason
) -> None:
    decision = decide(NEW_MESSAGE, prefs(), the_contact, NONE_YET, NOON_UTC)
    assert decision == Decision(Action.SUPPRESS, reason)


def test_opted_out_of_sms_falls_back_to_an_allowed_call() -> None:
    decision = decide(
        NEW_MESSAGE, prefs(voice_enabled=True), contact(opted_out=True), NONE_YET, NOON_UTC
    )
    assert (decision.action, decision.channel) == (Action.SEND, Channel.VOICE)


def test_landline_with_voice_off_is_number_unusable() -> None:
    decision = decide(NEW_MESSAGE, prefs(), contact(sms_usable=False), NONE_YET, NOON_UTC)
    assert decision.reason is Reason.NUMBER_UNUSABLE


@pytest.mark.parametrize(
    ("counts", "action"),
    [
        (Counts(last_day=0, last_week=2), Action.SEND),
        (Counts(last_day=1, last_week=1), Action.DEFER),
        (Counts(last_day=0, last_week=3), Action.DEFER),
    ],
)
def test_caps_one_a_day_three_a_week(counts: Counts, action: Action) -> None:
    decision = decide(NEW_MESSAGE, prefs(), GOOD, counts, NOON_UTC)
    assert decision.action is action
    if action is Action.DEFER:
        assert decision.reason is Reason.CAP_REACHED


def test_a_reached_cap_defers_until_the_oldest_notice_leaves_its_day() -> None:
    sent = NOON_UTC - timedelta(hours=3)
    counts = Counts(last_day=1, last_week=1, recent=(sent,))
    decision = decide(NEW_MESSAGE, prefs(), GOOD, counts, NOON_UTC)
    assert decision == Decision(Action.DEFER, Reason.CAP_REACHED, until=sent + timedelta(days=1))


def test_a_reached_weekly_cap_waits_for_the_week_to_roll() -> None:
    times = tuple(NOON_UTC - timedelta(days=days) for days in (6, 4, 2))
    counts = Counts(last_day=0, last_week=3, recent=times)
    decision = decide(NEW_MESSAGE, prefs(), GOOD, counts, NOON_UTC)
    assert decision.until == times[0] + timedelta(days=7)


def test_a_cap_of_zero_is_the_patients_choice_of_none() -> None:
    decision = decide(NEW_MESSAGE, prefs(daily_cap=0), GOOD, NONE_YET, NOON_UTC)
    assert decision == Decision(Action.SUPPRESS, Reason.CAP_ZERO)


def test_email_goes_when_it_is_the_only_channel_allowed() -> None:
    only_email = prefs(sms_enabled=False, email_enabled=True)
    decision = decide(NEW_MESSAGE, only_email, None, NONE_YET, NOON_UTC, email=True)
    assert decision == Decision(Action.SEND, Reason.ALLOWED, Channel.EMAIL)


def test_email_without_a_verified_address_is_no_usable_contact() -> None:
    only_email = prefs(sms_enabled=False, email_enabled=True)
    decision = decide(NEW_MESSAGE, only_email, None, NONE_YET, NOON_UTC, email=False)
    assert decision == Decision(Action.SUPPRESS, Reason.NO_ADDRESS)
    assert decision.reason in UNREACHABLE


def test_email_takes_over_from_an_unusable_number() -> None:
    both = prefs(email_enabled=True)
    decision = decide(NEW_MESSAGE, both, contact(sms_usable=False), NONE_YET, NOON_UTC, email=True)
    assert decision.channel is Channel.EMAIL


def test_an_opt_out_is_named_before_a_missing_address() -> None:
    both = prefs(email_enabled=True)
    decision = decide(NEW_MESSAGE, both, contact(opted_out=True), NONE_YET, NOON_UTC)
    assert decision == Decision(Action.SUPPRESS, Reason.OPTED_OUT)
    assert decision.reason not in UNREACHABLE


def test_email_waits_out_quiet_hours_like_a_text() -> None:
    now = datetime(2026, 6, 10, 23, 0, tzinfo=UTC)
    only_email = prefs(sms_enabled=False, email_enabled=True)
    decision = decide(NEW_MESSAGE, only_email, None, NONE_YET, now, email=True)
    assert decision.reason is Reason.QUIET_HOURS


def test_quiet_hours_defer_to_their_end_in_the_patients_zone() -> None:
    # 02:00 UTC is 22:00 the evening before in New York (EDT, UTC-4): quiet until 08:00.
    now = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    decision = decide(NEW_MESSAGE, prefs(time_zone="America/New_York"), GOOD, NONE_YET, now)
    assert decision.action is Action.DEFER
    assert decision.reason is Reason.QUIET_HOURS
    assert decision.until == datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def test_the_same_instant_is_daytime_elsewhere() -> None:
    now = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)  # 11:00 in Tokyo
    decision = decide(NEW_MESSAGE, prefs(time_zone="Asia/Tokyo"), GOOD, NONE_YET, now)
    assert decision.action is Action.SEND


def test_caps_are_checked_before_quiet_hours() -> None:
    # Deferred to when the cap allows one more; quiet hours are decided again then.
    now = datetime(2026, 6, 10, 23, 0, tzinfo=UTC)
    decision = decide(NEW_MESSAGE, prefs(), GOOD, Counts(1, 1), now)
    assert decision.reason is Reason.CAP_REACHED


def test_a_verification_code_ignores_quiet_hours_and_caps() -> None:
    now = datetime(2026, 6, 10, 23, 0, tzinfo=UTC)
    decision = decide(
        PHONE_VERIFICATION, prefs(sms_enabled=False), contact(verified=False), Counts(9, 9), now
    )
    assert decision == Decision(Action.SEND, Reason.REQUESTED, Channel.SMS)


def test_a_verification_code_is_not_sent_to_an_opted_out_number() -> None:
    decision = decide(PHONE_VERIFICATION, prefs(), contact(opted_out=True), NONE_YET, NOON_UTC)
    assert decision == Decision(Action.SUPPRESS, Reason.OPTED_OUT)


def test_an_unknown_kind_is_suppressed() -> None:
    assert decide("marketing", prefs(), GOOD, NONE_YET, NOON_UTC).reason is Reason.UNKNOWN_KIND


# Quiet hours on their own


Q_START, Q_END = time(21, 0), time(8, 0)


@pytest.mark.parametrize(
    ("local_hour", "quiet"),
    [(20, False), (21, True), (23, True), (0, True), (7, True), (8, False), (12, False)],
)
def test_window_crossing_midnight(local_hour: int, quiet: bool) -> None:
    now = datetime(2026, 1, 15, local_hour, 30, tzinfo=UTC)
    assert (quiet_until(now, "UTC", Q_START, Q_END) is not None) is quiet


def test_evening_defers_to_tomorrow_morning_and_night_to_this_morning() -> None:
    evening = datetime(2026, 1, 15, 22, 0, tzinfo=UTC)
    night = datetime(2026, 1, 16, 3, 0, tzinfo=UTC)
    morning = datetime(2026, 1, 16, 8, 0, tzinfo=UTC)
    assert quiet_until(evening, "UTC", Q_START, Q_END) == morning
    assert quiet_until(night, "UTC", Q_START, Q_END) == morning


def test_a_window_within_one_day() -> None:
    now = datetime(2026, 1, 15, 13, 0, tzinfo=UTC)
    assert quiet_until(now, "UTC", time(12, 0), time(14, 0)) == datetime(
        2026, 1, 15, 14, 0, tzinfo=UTC
    )
    assert quiet_until(now, "UTC", time(14, 0), time(16, 0)) is None


def test_equal_start_and_end_means_no_quiet_hours() -> None:
    assert quiet_until(NOON_UTC, "UTC", time(0, 0), time(0, 0)) is None


def test_spring_forward_night_ends_at_eight_daylight_time() -> None:
    # New York, 8 March 2026: clocks jump from 02:00 EST to 03:00 EDT.
    now = datetime(2026, 3, 8, 4, 30, tzinfo=UTC)  # 23:30 EST on the 7th
    # 08:00 EDT on the 8th is 12:00 UTC (not 13:00, as it would be in winter).
    assert quiet_until(now, "America/New_York", Q_START, Q_END) == datetime(
        2026, 3, 8, 12, 0, tzinfo=UTC
    )


def test_fall_back_night_ends_at_eight_standard_time() -> None:
    # New York, 1 November 2026: clocks fall back from 02:00 EDT to 01:00 EST.
    now = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)  # 23:00 EDT on 31 October
    assert quiet_until(now, "America/New_York", Q_START, Q_END) == datetime(
        2026, 11, 1, 13, 0, tzinfo=UTC
    )


def test_an_end_inside_the_spring_forward_gap_is_after_the_gap() -> None:
    # Quiet until 02:30, a time that does not exist in New York on 8 March 2026.
    now = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST
    until = quiet_until(now, "America/New_York", time(1, 0), time(2, 30))
    assert until == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT
    assert until > now


def test_an_end_repeated_by_fall_back_is_its_first_occurrence() -> None:
    # 01:30 happens twice in New York on 1 November 2026; quiet 00:00-01:30.
    now = datetime(2026, 11, 1, 4, 15, tzinfo=UTC)  # 00:15 EDT
    until = quiet_until(now, "America/New_York", time(0, 0), time(1, 30))
    assert until == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT, the first one


def test_southern_hemisphere_dst() -> None:
    # Sydney is on daylight time (UTC+11) in January: 22:00 local is 11:00 UTC.
    now = datetime(2026, 1, 15, 11, 0, tzinfo=UTC)
    assert quiet_until(now, "Australia/Sydney", Q_START, Q_END) == datetime(
        2026, 1, 15, 21, 0, tzinfo=UTC
    )


def test_only_a_notice_sent_under_the_team_name_level_names_the_team() -> None:
    named = decide(NEW_MESSAGE, prefs(), GOOD, NONE_YET, NOON_UTC, level=Level.TEAM_NAME)
    assert named == Decision(Action.SEND, Reason.ALLOWED, Channel.SMS, names_team=True)
    assert not decide(NEW_MESSAGE, prefs(), GOOD, NONE_YET, NOON_UTC).names_team
    # A deferred or suppressed notice names nobody (it is decided again when it goes).
    capped = Counts(last_day=1, last_week=1, recent=(NOON_UTC - timedelta(hours=1),))
    deferred = decide(NEW_MESSAGE, prefs(), GOOD, capped, NOON_UTC, level=Level.TEAM_NAME)
    assert deferred.action is Action.DEFER and not deferred.names_team
    code = decide(PHONE_VERIFICATION, prefs(), GOOD, NONE_YET, NOON_UTC, level=Level.TEAM_NAME)
    assert code.action is Action.SEND and not code.names_team
