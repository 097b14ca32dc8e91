"""Every word sms/ sends or says, in one place to review for PHI.

Nothing here takes a patient's name, a diagnosis or a message: only the configured
sender label (which may itself be neutral on purpose), a link, a code, a callback number,
and the care team's name where the patient's consent in force allows it (sms.consent).
HHS's guidance for voicemail is the model: a name and a number to call back.

Each wording is a message of carebridge.i18n (``make messages`` extracts them), with
named placeholders so a translation can move them. The worker has no request to take a
locale from: they speak carebridge.i18n's current locale, "en" until a recipient's
preference is stored.
"""

from __future__ import annotations

from carebridge.i18n import N_, _, ngettext

SMS_LIMIT = 160  # one GSM-7 segment

# The insecure-channel consent, per version of its text. A constant, not a setting: the
# words are what the patient agreed to, reviewed here with every other word sent, and
# translated from the catalog; a setting could change them without a new version or a
# translation. New words are a new version (a release): the consents given under the
# old one stop applying, and the preferences page asks again (sms.consent). Older
# versions stay, to say what an earlier consent was to. A translation is of the same
# version: it must say the same.
CONSENT_TEXTS = {
    "2026-11-23": N_(
        "I agree that text messages and calls may say more than that I have a new secure "
        "message. I understand that SMS and voicemail are not secure and others with access "
        "to my phone may see or hear them."
    ),
    "2026-12-07": N_(
        "I agree that my text messages, calls and e-mail notices may name the care team "
        "that wrote to me. I understand that these are not secure: anyone who sees my "
        "phone or my inbox, or hears my voicemail, may learn which care team I see, and a "
        "team's name can say what kind of care I get. Never the message itself."
    ),
}
CONSENT_VERSION = "2026-12-07"  # the version in force: only a consent to it names a team
CONSENT_TEXT = CONSENT_TEXTS[CONSENT_VERSION]
TEAM_NAME_LIMIT = 60  # a team's name in a notice: cut, so the link always fits


def team_in_notice(name: str | None) -> str:
    """A care team's name as a notice may carry it: one line of printable characters,
    cut to a length (TwiML and e-mail escape it again where they must)."""
    if not name:
        return ""
    printable = "".join(char if char.isprintable() else " " for char in name)
    return " ".join(printable.split())[:TEAM_NAME_LIMIT].strip()


def new_message_sms(label: str, url: str, count: int = 1, team: str = "") -> str:
    """The notice with its secure link; at most 160 characters, or a shorter wording.
    ``count``: the new messages it covers (notices deferred by quiet hours or a cap are
    merged into one). ``team``: the care team's name, only where the patient's consent
    in force allows it (sms.consent); dropped rather than the link when too long."""
    prefix = f"{label}: " if label else ""
    values = {"url": url, "count": count, "team": team_in_notice(team)}
    if values["team"]:
        text = (
            prefix
            + ngettext(
                "You have a new secure message from %(team)s. View it at %(url)s "
                "Reply STOP to opt out",
                "You have %(count)d new secure messages from %(team)s. View them at "
                "%(url)s Reply STOP to opt out",
                count,
            )
            % values
        )
        if len(text) <= SMS_LIMIT:
            return text
    # TRANSLATORS: keep STOP (and START) as they are: they are the keywords carriers and
    # sms.webhooks act on, whatever the language of the text.
    text = (
        prefix
        + ngettext(
            "You have a new secure message. View it at %(url)s Reply STOP to opt out",
            "You have %(count)d new secure messages. View them at %(url)s Reply STOP to opt out",
            count,
        )
        % values
    )
    if len(text) <= SMS_LIMIT:
        return text
    text = (
        prefix
        + ngettext(
            "New secure message: %(url)s STOP to opt out",
            "%(count)d new secure messages: %(url)s STOP to opt out",
            count,
        )
        % values
    )
    if len(text) <= SMS_LIMIT:
        return text
    return (_("New secure message: %(url)s STOP to end") % {"url": url})[:SMS_LIMIT]


def new_message_email(label: str, url: str, count: int = 1, team: str = "") -> tuple[str, str]:
    """The e-mail notice: ``(subject, text)``. Generic like the SMS: nothing of the
    message; the link leads to sign-in first. ``team``: the care team's name, only where
    the patient's consent in force allows it (sms.consent)."""
    who = label or _("Secure messages")
    values = {"count": count, "team": team_in_notice(team)}
    if values["team"]:
        subject = (
            ngettext(
                "You have a new secure message from %(team)s",
                "You have %(count)d new secure messages from %(team)s",
                count,
            )
            % values
        )
    else:
        subject = (
            ngettext(
                "You have a new secure message", "You have %(count)d new secure messages", count
            )
            % values
        )
    body = (
        ngettext(
            "You have a new secure message. Sign in to read it:",
            "You have %(count)d new secure messages. Sign in to read them:",
            count,
        )
        % values
    )
    why = _(
        "You get this e-mail because you turned on e-mail notices in your notification "
        "settings. You can turn them off there."
    )
    return f"{who}: {subject}", f"{body}\n\n{url}\n\n{why}\n"


def verification_sms(label: str, code: str) -> str:
    prefix = f"{label}: " if label else ""
    return prefix + _("Your verification code is %(code)s. It expires in 10 minutes.") % {
        "code": code
    }


def help_sms(label: str, callback_number: str) -> str:
    who = label or _("Secure message")
    call = (
        " " + _("Questions: %(number)s.") % {"number": callback_number} if callback_number else ""
    )
    text = _("%(who)s notifications. Reply STOP to stop, START to resume.") % {"who": who}
    return f"{text}{call}"[:SMS_LIMIT]


def _spoken_number(number: str) -> str:
    # Digit by digit, so the number is read out, not pronounced as an amount.
    digits = number.removeprefix("+1") if number.startswith("+1") else number.lstrip("+")
    return ", ".join(" ".join(group) for group in (digits[:3], digits[3:6], digits[6:]) if group)


def voice_notice(label: str, callback_number: str, team: str = "") -> str:
    """What a person who answers hears, and the voicemail when the patient allowed one.
    ``team``: the care team's name, only where the patient's consent in force allows it."""
    who = label or _("your care team")
    named = team_in_notice(team)
    if named:
        who = _("%(who)s, for %(team)s") % {"who": who, "team": named}
    if not callback_number:
        return _("Hello. This is %(who)s. Please sign in to your account. Goodbye.") % {"who": who}
    spoken = _spoken_number(callback_number)
    return _(
        "Hello. This is %(who)s. Please call us back at %(number)s. Again, %(number)s. Goodbye."
    ) % {"who": who, "number": spoken}


def one_time_code_sms(label: str, code: str) -> str:
    """A code identity asked for (signing in, a changed setting): the code, nothing else."""
    prefix = f"{label}: " if label else ""
    return prefix + _("Your one-time code is %(code)s. Do not share it with anyone.") % {
        "code": code
    }


def security_notice_sms(label: str, url: str) -> str:
    """A security notice identity asked for (an account recovery): one generic sentence and
    the "this wasn't me" link, GSM-7 only. Longer than one segment with a long link (two
    concatenated segments): cutting it would cut the link."""
    prefix = f"{label}: " if label else ""
    # TRANSLATORS: keep it free of anything about health or care, and keep STOP as it is.
    return prefix + _(
        "Someone asked to change how you sign in to your account. If this wasn't you, "
        "open %(url)s Reply STOP to opt out"
    ) % {"url": url}
