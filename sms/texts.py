"""Every word sms/ sends or says, in one place to review for PHI.

Nothing here takes a name, a diagnosis, a provider or a message: only the configured
sender label (which may itself be neutral on purpose), a link, a code, a callback number.
HHS's guidance for voicemail is the model: a name and a number to call back.
"""

from __future__ import annotations

SMS_LIMIT = 160  # one GSM-7 segment

# Shown next to the insecure-channel consent box; its version is stored with the consent.
CONSENT_VERSION = "2026-11-23"
CONSENT_TEXT = (
    "I agree that text messages and calls may say more than that I have a new secure "
    "message. I understand that SMS and voicemail are not secure and others with access "
    "to my phone may see or hear them."
)


def new_message_sms(label: str, url: str) -> str:
    """The notice with its secure link; at most 160 characters, or a shorter wording."""
    prefix = f"{label}: " if label else ""
    text = f"{prefix}You have a new secure message. View it at {url} Reply STOP to opt out"
    if len(text) <= SMS_LIMIT:
        return text
    text = f"{prefix}New secure message: {url} STOP to opt out"
    if len(text) <= SMS_LIMIT:
        return text
    return f"New secure message: {url} STOP to end"[:SMS_LIMIT]


def verification_sms(label: str, code: str) -> str:
    prefix = f"{label}: " if label else ""
    return f"{prefix}Your verification code is {code}. It expires in 10 minutes."


def help_sms(label: str, callback_number: str) -> str:
    who = label or "Secure message"
    call = f" Questions: {callback_number}." if callback_number else ""
    return f"{who} notifications. Reply STOP to stop, START to resume.{call}"[:SMS_LIMIT]


def _spoken_number(number: str) -> str:
    # Digit by digit, so the number is read out, not pronounced as an amount.
    digits = number.removeprefix("+1") if number.startswith("+1") else number.lstrip("+")
    return ", ".join(" ".join(group) for group in (digits[:3], digits[3:6], digits[6:]) if group)


def voice_notice(label: str, callback_number: str) -> str:
    """What a person who answers hears, and the voicemail when the patient allowed one."""
    who = label or "your care team"
    if not callback_number:
        return f"Hello. This is {who}. Please sign in to your account. Goodbye."
    spoken = _spoken_number(callback_number)
    return f"Hello. This is {who}. Please call us back at {spoken}. Again, {spoken}. Goodbye."


def one_time_code_sms(label: str, code: str) -> str:
    """A code identity asked for (signing in, a changed setting): the code, nothing else."""
    prefix = f"{label}: " if label else ""
    return f"{prefix}Your one-time code is {code}. Do not share it with anyone."
