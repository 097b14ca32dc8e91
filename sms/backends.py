"""The configured sender: the console (development) or Twilio (production)."""

from __future__ import annotations

import secrets
import sys
from typing import TextIO

from carebridge.settings import ConfigError, Settings, SmsBackend
from sms.interfaces import Sender


class ConsoleSender:
    """Prints each SMS (link included) and call to the terminal, never to the log.

    For development only (production refuses it): the number and the text appear on
    standard output, which is the developer's terminal, not the JSON log stream.
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    @property
    def key(self) -> str:
        return "console"

    def _print(self, line: str) -> None:
        print(line, file=self._out or sys.stdout, flush=True)

    def send_sms(self, to: str, body: str, status_callback: str) -> str:
        self._print(f"[sms to {to}] {body}")
        return f"SMconsole{secrets.token_hex(12)}"

    def place_call(self, to: str, twiml_url: str, amd_callback: str, status_callback: str) -> str:
        self._print(f"[call to {to}] (the console does not dial)")
        return f"CAconsole{secrets.token_hex(12)}"

    def update_call(self, call_sid: str, twiml: str) -> None:
        self._print(f"[call {call_sid}] {twiml}")


def for_settings(settings: Settings) -> Sender:
    if settings.sms_backend is SmsBackend.CONSOLE:
        return ConsoleSender()
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        raise ConfigError(
            "CAREBRIDGE_TWILIO_ACCOUNT_SID and CAREBRIDGE_TWILIO_AUTH_TOKEN are required "
            "with CAREBRIDGE_SMS_BACKEND=twilio"
        )
    if not (settings.twilio_messaging_service_sid or settings.twilio_from_number):
        raise ConfigError(
            "CAREBRIDGE_TWILIO_MESSAGING_SERVICE_SID or CAREBRIDGE_TWILIO_FROM_NUMBER is "
            "required with CAREBRIDGE_SMS_BACKEND=twilio"
        )
    from sms.twilio_client import TwilioSender  # noqa: PLC0415  (only production imports twilio)

    return TwilioSender(settings)
