"""Twilio, through the real ``twilio`` library: the only module that imports it.

Sending (SMS, calls with answering-machine detection, call updates), webhook signature
checks and TwiML all live here, so a reviewer finds every contact with Twilio in one file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse
from urllib3.exceptions import NewConnectionError

from carebridge.settings import Settings
from sms.interfaces import ErrorKind, SendError, classify

# While detection listens for the end of a greeting, the call holds silently; the
# detection callback then replaces this with what to say (or a hang-up).
_HOLD_SECONDS = 60


def _not_sent(exc: requests.RequestException) -> bool:
    """A connection that was never made: the request cannot have reached Twilio."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return True
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else (nested[0] if nested else None)
    return False


def _send_error(exc: Exception) -> SendError:
    if isinstance(exc, TwilioRestException):
        return SendError(classify(exc.code, exc.status), code=exc.code, status=exc.status)
    if isinstance(exc, requests.RequestException):
        return SendError(ErrorKind.RETRY if _not_sent(exc) else ErrorKind.UNKNOWN)
    raise exc


class TwilioSender:
    def __init__(self, settings: Settings, http_client: HttpClient | None = None) -> None:
        assert settings.twilio_auth_token is not None  # noqa: S101  (backends.for_settings checks)
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=http_client or TwilioHttpClient(timeout=settings.twilio_timeout_seconds),
        )
        if settings.twilio_api_base_url:
            # Leave edge and region unset: they would rewrite this host (PITFALLS.md).
            self._client.api.base_url = settings.twilio_api_base_url
        self._service = settings.twilio_messaging_service_sid
        self._from = settings.twilio_from_number

    @property
    def key(self) -> str:
        return self._service or self._from

    def send_sms(self, to: str, body: str, status_callback: str) -> str:
        sender = (
            {"messaging_service_sid": self._service} if self._service else {"from_": self._from}
        )
        try:
            message = self._client.messages.create(
                to=to, body=body, status_callback=status_callback, **sender
            )
        except (TwilioRestException, requests.RequestException) as exc:
            raise _send_error(exc) from None
        return str(message.sid)

    def place_call(self, to: str, twiml_url: str, amd_callback: str, status_callback: str) -> str:
        try:
            call = self._client.calls.create(
                to=to,
                from_=self._from,
                url=twiml_url,
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=amd_callback,
                # Twilio's default events: just "completed", all this needs.
                status_callback=status_callback,
            )
        except (TwilioRestException, requests.RequestException) as exc:
            raise _send_error(exc) from None
        return str(call.sid)

    def update_call(self, call_sid: str, twiml: str) -> None:
        try:
            self._client.calls(call_sid).update(twiml=twiml)
        except (TwilioRestException, requests.RequestException) as exc:
            raise _send_error(exc) from None


# Webhooks


def valid_signature(
    auth_token: str, url: str, params: Mapping[str, Sequence[str]], signature: str
) -> bool:
    """Whether X-Twilio-Signature signs this URL (as Twilio called it) and these parameters.

    Always HMAC-SHA1 under the auth token: the request does not get to pick the algorithm.
    """
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, _MultiParams(params), signature))


class _MultiParams:
    """Repeated form fields, as RequestValidator reads them (``getall``)."""

    def __init__(self, params: Mapping[str, Sequence[str]]) -> None:
        self._params = params

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def getall(self, name: str) -> list[str]:
        return list(self._params[name])


def hold_twiml() -> str:
    response = VoiceResponse()
    response.pause(length=_HOLD_SECONDS)
    response.hangup()
    return str(response)


def say_twiml(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def messaging_twiml(reply: str | None) -> str:
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return str(response)
