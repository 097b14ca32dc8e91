"""The production backend: each e-mail handed to an SMTP relay (the standard library's
smtplib, in the outbox worker's thread: outbox handlers run off the event loop).

One connection per e-mail, TLS always (smtps:// from the first byte, or smtp:// upgraded
with STARTTLS; plain only to a loopback relay that offers no STARTTLS), the certificate
always verified. What the relay answers decides what the outbox does with the row:

- accepted: done;
- a 5xx about this e-mail (recipient or sender refused, data rejected), or an address the
  relay cannot carry (SMTPUTF8 not offered): :class:`~carebridge.outbox.Undeliverable`,
  a dead letter for the operators (``carebridge notifications dead``);
- anything else (refused or timed-out connection, a 4xx such as 421/451, a TLS handshake
  or certificate failure, a relay that no longer offers STARTTLS, failed
  authentication): :class:`~carebridge.outbox.RetryLater`, after the outbox's backoff.

The logs carry the outbox ID, the SMTP status code and a code word; never an address,
a subject or a body. The Message-ID is derived from the outbox ID, so a delivery repeated
after a worker died between sending and recording (the outbox is at least once) carries
the same Message-ID as the first and receiving systems can tell it is a copy.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from carebridge import outbox
from carebridge.mail.sender import CHANNEL, TRANSACTIONAL
from carebridge.settings import Settings, SmtpRelay
from carebridge.utc import utcnow

log = logging.getLogger("carebridge.mail")


def compose(message: outbox.Message, *, sender: str) -> EmailMessage:
    """The e-mail of an outbox row: From, To, Subject, Date, Message-ID; the text, and
    the HTML as its alternative when there is one."""
    content = message.content
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    email = EmailMessage()
    email["From"] = sender
    email["To"] = content["to"]
    email["Subject"] = content["subject"]
    email["Date"] = format_datetime(utcnow())
    email["Message-ID"] = f"<{message.id}@{domain}>"
    # Transactional: out-of-office replies and autoresponders should not answer it.
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(content["text"])
    if "html" in content:
        email.add_alternative(content["html"], subtype="html")
    return email


def _tls_context(settings: Settings) -> ssl.SSLContext:
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file is not None else None
    # Verification on, host name checked, TLS 1.2 at least: the defaults of this context.
    return ssl.create_default_context(cafile=cafile)


class SmtpMailer:
    """Sends each outbox e-mail through ``CAREBRIDGE_SMTP_URL``."""

    channel = CHANNEL

    def __init__(self, settings: Settings) -> None:
        relay = settings.smtp_relay
        if relay is None:  # the settings refuse email_backend=smtp without a URL
            raise ValueError("CAREBRIDGE_SMTP_URL is not set")
        self._relay: SmtpRelay = relay
        self._sender = settings.email_from
        self._timeout = settings.smtp_timeout_seconds
        self._tls = _tls_context(settings)

    def deliver(self, message: outbox.Message) -> None:
        if message.kind != TRANSACTIONAL:
            raise outbox.Undeliverable("unknown_kind")
        email = compose(message, sender=self._sender)
        try:
            self._send(email)
        except (smtplib.SMTPException, OSError) as exc:  # ssl's errors and timeouts too
            outcome, code = classify(exc)
            raise _failed(message, outcome, code) from None
        log.info("email handed to the relay", extra={"outbox": message.id})

    def _send(self, email: EmailMessage) -> None:
        relay = self._relay
        client: smtplib.SMTP
        if relay.implicit_tls:
            client = smtplib.SMTP_SSL(
                relay.host, relay.port, timeout=self._timeout, context=self._tls
            )
        else:
            client = smtplib.SMTP(relay.host, relay.port, timeout=self._timeout)
        with client:
            client.ehlo()
            if not relay.implicit_tls:
                if client.has_extn("starttls"):
                    client.starttls(context=self._tls)
                    client.ehlo()
                elif not relay.plain:
                    # Stripped from the answer (or a relay misconfigured): never plain.
                    raise _StarttlsMissing
            if relay.username is not None:
                client.login(relay.username, relay.password or "")
            client.send_message(email)


class _StarttlsMissing(smtplib.SMTPException):
    """The relay did not offer STARTTLS where it is required."""


Outcome = outbox.RetryLater | outbox.Undeliverable

# Failures that are never about the e-mail itself, by type (the first match counts).
_TRANSIENT: tuple[tuple[type[BaseException], str], ...] = (
    (_StarttlsMissing, "smtp_starttls_missing"),
    (ssl.SSLCertVerificationError, "smtp_tls_untrusted"),
    (ssl.SSLError, "smtp_tls"),
    (TimeoutError, "smtp_timeout"),
    (smtplib.SMTPServerDisconnected, "smtp_disconnected"),
    (smtplib.SMTPException, "smtp_error"),
    (OSError, "smtp_unreachable"),  # refused, unreachable, name not resolved
)


def classify(exc: BaseException) -> tuple[Outcome, int | None]:
    """What the outbox does after ``exc``, and the SMTP status code behind it."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        # One recipient per e-mail: its (code, text) is the only entry.
        codes = [code for code, _ in exc.recipients.values()]
        return _by_code(codes[0] if codes else 550, "recipient")
    if isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError):
        step = "data" if isinstance(exc, smtplib.SMTPDataError) else "sender"
        return _by_code(exc.smtp_code, step)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # An internationalized address to a relay without SMTPUTF8: it never will.
        return outbox.Undeliverable("smtp_utf8_unsupported"), None
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        # Our configuration, not this e-mail: it waits (and dies only of old age).
        return outbox.RetryLater("smtp_auth"), exc.smtp_code
    if isinstance(exc, smtplib.SMTPResponseException):
        # A greeting or a command answered 4xx/5xx outside this e-mail's own steps (421
        # closing, 554 no service): the relay's state, not the e-mail's.
        return outbox.RetryLater(f"smtp_{exc.smtp_code}"), exc.smtp_code
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(
        exc.__context__, TimeoutError
    ):
        exc = exc.__context__  # smtplib reports a reply that timed out as a disconnection
    reason = next(word for kind, word in _TRANSIENT if isinstance(exc, kind))
    return outbox.RetryLater(reason), None


def _by_code(code: int, what: str) -> tuple[Outcome, int]:
    if 500 <= code < 600:  # SMTP's permanent failures
        return outbox.Undeliverable(f"smtp_{what}_{code}"), code
    return outbox.RetryLater(f"smtp_{what}_{code}"), code


def _failed(message: outbox.Message, outcome: Outcome, code: int | None) -> Outcome:
    # The outbox logs dead letters itself; a retry is logged here, with the status code.
    log.warning(
        "email not delivered",
        extra={
            "outbox": message.id,
            "attempt": message.attempt,
            "smtp_status": code,
            "reason": outcome.reason,
        },
    )
    return outcome
