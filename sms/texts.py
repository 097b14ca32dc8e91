"""Every word sms/ sends or says, in one place to review for PHI.

Nothing here takes a name, a diagnosis, a provider or a message: only the configured
sender label (which may itself be neutral on purpose), a link, a code, a callback number.
HHS's guidance for voicemail is the model: a name and a number to call back.

Each wording is a message of carebridge.i18n (``make messages`` extracts them), with
named placeholders so a translation can move them. The worker has no request to take a
locale from: they speak carebridge.i18n's current locale, "en" until a recipient's
preference is stored.
"""

from __future__ import annotations

from carebridge.i18n import N_, _, ngettext

SMS_LIMIT = 160  # one GSM-7 segment

# Shown next to the insecure-channel consent box; its version is stored with the consent
# (a translation is of the same version: it must say the same). Marked here, translated
# where shown (sms.pages).
CONSENT_VERSION = "2026-11-23"
CONSENT_TEXT = N_(
    "I agree that text messages and calls may say more than that I have a new secure "
    "message. I understand that SMS and voicemail are not secure and others with access "
    "to my phone may see or hear them."
)


def new_message_sms(label: str, url: str, count: int = 1) -> str:
    """The notice with its secure link; at most 160 characters, or a shorter wording.
    ``count``: the new messages it covers (notices deferred by quiet hours or a cap are
    merged into one)."""
    prefix = f"{label}: " if label else ""
    values = {"url": url, "count": count}
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


def new_message_email(label: str, url: str, count: int = 1) -> tuple[str, str]:
    """The e-mail notice: ``(subject, text)``. Generic like the SMS: no team, no name,
    nothing of the message; the link leads to sign-in first."""
    who = label or _("Secure messages")
    subject = ngettext(
        "You have a new secure message", "You have %(count)d new secure messages", count
    ) % {"count": count}
    body = ngettext(
        "You have a new secure message. Sign in to read it:",
        "You have %(count)d new secure messages. Sign in to read them:",
        count,
    ) % {"count": count}
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


def voice_notice(label: str, callback_number: str) -> str:
    """What a person who answers hears, and the voicemail when the patient allowed one."""
    who = label or _("your care team")
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
