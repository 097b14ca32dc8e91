"""Translations: the one place that knows where catalogs live and which locale speaks.

Every user-facing string goes through :func:`gettext` (imported as ``_``) or
:func:`ngettext`, in Python and in templates (carebridge.http.templates installs both
into Jinja's i18n extension). ``make messages`` extracts them into
``carebridge/locales/messages.pot``; a translation is ``locales/<locale>/LC_MESSAGES/
messages.po``, compiled to ``messages.mo`` beside it. The stdlib reads the compiled
catalogs, so Babel is only a tool of the build, not of the running service.

Texts made whole in Python (SMS, voice) call ``_()`` as they are made. Messages chosen in
Python and shown on a page (form errors, notices, error pages) are marked with :func:`N_`
where they are written, so extraction finds them, and translated where they are shown:
``{{ message | translated }}``, in the page's locale. Translating them at import would
freeze the locale of whoever imported first; and the same messages answer the JSON API,
which stays English (docs/architecture.md, "Translations").

English only for now: no catalog ships, and a locale without one answers its message
IDs unchanged (:class:`gettext.NullTranslations`), which are the English texts.
"""

from __future__ import annotations

import functools
import gettext as stdlib_gettext
from pathlib import Path

DOMAIN = "messages"
DEFAULT_LOCALE = "en"
# Read at each lookup (not bound at import), so tests can point it at a scratch catalog.
LOCALES_DIR = Path(__file__).with_name("locales")


def current_locale() -> str:
    """The locale of the text being produced: where negotiation will go.

    Today always :data:`DEFAULT_LOCALE`. When a second language ships, a middleware picks
    it per request (the account's preference, else ``Accept-Language`` among the locales
    that have a catalog) and sets a context variable that this function reads; SMS and
    voice texts, produced by the worker, will read the recipient's stored preference.
    """
    return DEFAULT_LOCALE


@functools.lru_cache(maxsize=16)
def translations(locale: str, directory: Path) -> stdlib_gettext.NullTranslations:
    """The compiled catalog of ``locale`` in ``directory``; without one, the message IDs."""
    return stdlib_gettext.translation(DOMAIN, directory, languages=[locale], fallback=True)


def gettext(message: str) -> str:
    return translations(current_locale(), LOCALES_DIR).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current_locale(), LOCALES_DIR).ngettext(singular, plural, n)


def N_(message: str) -> str:  # noqa: N802 (the name extraction tools know)
    """Marks a string for extraction without translating it yet (see the module doc)."""
    return message


_ = gettext
