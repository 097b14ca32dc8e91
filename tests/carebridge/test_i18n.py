"""Translations are wired: a catalog changes what pages and texts say; extraction finds the
strings of templates and Python; the committed .pot is what extraction gives today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from starlette.testclient import TestClient

from carebridge import i18n
from carebridge.http.templates import templates
from sms import texts

ROOT = Path(__file__).resolve().parents[2]
POT = ROOT / "carebridge" / "locales" / "messages.pot"
HTML = {"accept": "text/html"}


def _pseudo(message: str) -> str:
    # Brackets around the English: placeholders survive, and a test sees what went through.
    return f"[[{message}]]"


def _extract(output: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """The catalog `make messages` writes (same arguments), into ``output``."""
    monkeypatch.chdir(ROOT)  # locations are relative paths, as in the committed file
    CommandLineInterface().run(
        [
            "pybabel",
            "--quiet",
            "extract",
            "-F",
            "babel.cfg",
            "--project=carebridge",
            "--add-location=file",
            "--add-comments=TRANSLATORS:",
            "-o",
            str(output),
            "carebridge",
            "identity",
            "messaging",
            "sms",
        ]
    )
    with output.open("rb") as file:
        return read_po(file)


@pytest.fixture
def pseudo_locale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every extracted message in brackets, compiled with Babel, selected as the locale."""
    with POT.open("rb") as file:
        template = read_po(file)
    catalog = Catalog(locale="de")
    for message in template:
        if not message.id:
            continue
        if isinstance(message.id, tuple | list):
            catalog.add(message.id, tuple(_pseudo(form) for form in message.id))
        else:
            catalog.add(message.id, _pseudo(message.id))
    directory = tmp_path / "de" / "LC_MESSAGES"
    directory.mkdir(parents=True)
    with (directory / "messages.mo").open("wb") as file:
        write_mo(file, catalog)
    monkeypatch.setattr(i18n, "LOCALES_DIR", tmp_path)
    monkeypatch.setattr(i18n, "current_locale", lambda: "de")


def test_without_a_catalog_the_texts_are_the_english_message_ids() -> None:
    assert i18n.current_locale() == "en"
    assert i18n.gettext("Sign in") == "Sign in"
    assert i18n.ngettext("%(n)s code", "%(n)s codes", 2) == "%(n)s codes"


@pytest.mark.usefixtures("pseudo_locale")
def test_a_catalog_translates_template_strings_python_messages_and_texts(
    client: TestClient,
) -> None:
    signin = client.get("/signin", headers=HTML)
    assert "<h1>[[Sign in]]</h1>" in signin.text
    assert "[[Email address]]" in signin.text  # a label passed to a macro
    assert "<title>[[Sign in]] " in signin.text

    # A message chosen in Python (marked N_) is translated where the page shows it.
    missing = client.get("/no-such-page", headers=HTML)
    assert missing.status_code == 404
    assert "<h1>[[Page not found]]</h1>" in missing.text

    assert texts.verification_sms("", "123456") == (
        "[[Your verification code is 123456. It expires in 10 minutes.]]"
    )
    assert texts.voice_notice("", "") == (
        "[[Hello. This is [[your care team]]. Please sign in to your account. Goodbye.]]"
    )


@pytest.mark.usefixtures("pseudo_locale")
def test_values_in_translated_strings_are_escaped() -> None:
    page = templates.env.from_string("{{ _('Link %(provider)s', provider=name) }}")
    assert page.render(name="<b>ID</b>") == "[[Link &lt;b&gt;ID&lt;/b&gt;]]"
    message = templates.env.from_string("{{ message | translated }}")
    assert message.render(message="Enter your password.") == "[[Enter your password.]]"
    assert message.render(message="<i>typed</i>") == "&lt;i&gt;typed&lt;/i&gt;"


def test_extraction_finds_the_strings_of_templates_and_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = _extract(tmp_path / "messages.pot", monkeypatch)
    where = {
        # templates: {{ _() }}, {% trans %} with a plural, a label passed to a macro
        "There is a problem": "identity/templates/identity/macros.html",
        ("You have %(count)s unread message.", "You have %(count)s unread messages."): (
            "messaging/templates/messaging/inbox.html"
        ),
        "Code from the text message": "sms/templates/sms/notifications.html",
        # Python: _() in sms texts, N_() on page messages and form errors
        "Your verification code is %(code)s. It expires in 10 minutes.": "sms/texts.py",
        "Enter your date of birth.": "identity/flows/verify.py",
        "Page not found": "carebridge/http/problems.py",
    }
    for msgid, path in where.items():
        message = catalog.get(msgid)
        assert message is not None, msgid
        assert path in [location for location, _line in message.locations]
    assert (
        "python-format"
        in catalog.get("Your verification code is %(code)s. It expires in 10 minutes.").flags
    )


def _body(pot: str) -> str:
    # The header's creation date (and copyright year) change on every run, not the messages.
    return re.sub(
        r'"POT-Creation-Date: [^"]*"\n|^# Copyright.*\n|^# FIRST AUTHOR.*\n', "", pot, flags=re.M
    )


def test_the_committed_pot_is_what_extraction_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "messages.pot"
    _extract(fresh, monkeypatch)
    assert _body(fresh.read_text()) == _body(POT.read_text()), (
        "carebridge/locales/messages.pot is out of date: run `make messages` and commit it"
    )
