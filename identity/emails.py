"""identity's transactional e-mails: rendered from templates, queued through ``Outward.email``.

Each e-mail is a pair of templates in ``identity/templates/identity/email/``:
``<name>.txt`` (the plain-text part) and ``<name>.html`` (a simple HTML part, extending
``email/base.html``), both translated like the pages. The subject is the text template's
first line; the rest is the body. What an e-mail may hold is fixed here, not by each
flow: links and codes, never PHI (no name, date of birth, care team or message text),
so a template gets only :class:`Email`'s fields. The queue is the transactional outbox:
:func:`send` writes the e-mail in the caller's transaction, so it goes out exactly when
what it announces commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
from sqlalchemy.orm import Session

from carebridge import i18n
from carebridge.settings import Settings
from identity.interfaces import EmailSender

TEMPLATES = Path(__file__).with_name("templates") / "identity" / "email"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    extensions=["jinja2.ext.i18n"],
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
# Like the pages (carebridge.http.templates): looked up at each render, in the locale
# carebridge.i18n selects; newstyle, so placeholders are named and escaped in HTML.
_environment.install_gettext_callables(  # type: ignore[attr-defined]
    i18n.gettext, i18n.ngettext, newstyle=True
)


@dataclass(frozen=True)
class Email:
    """What an identity e-mail may say: which one it is, a link, a code, a time limit."""

    template: str
    link: str | None = None
    code: str | None = None
    minutes: int | None = None
    hours: int | None = None
    days: int | None = None


def render(email: Email, *, service: str) -> tuple[str, str, str]:
    """``(subject, text, html)`` of ``email``; ``service`` is the sender's configured name
    (``Settings.email_sender_name``), which the text signs with."""
    values = {
        "link": email.link,
        "code": email.code,
        "minutes": email.minutes,
        "hours": email.hours,
        "days": email.days,
        "service": service,
    }
    rendered = _environment.get_template(f"{email.template}.txt").render(values)
    subject, _, text = rendered.partition("\n")
    html = _environment.get_template(f"{email.template}.html").render(values)
    return subject.strip(), text.lstrip("\n"), html


def send(db: Session, sender: EmailSender, settings: Settings, *, to: str, email: Email) -> str:
    """Queue ``email`` to ``to`` in ``db``'s transaction; returns the outbox ID."""
    subject, text, html = render(email, service=settings.email_sender_name)
    return sender.send_email(db, to=to, subject=subject, text=text, html=html)
