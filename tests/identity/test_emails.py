"""identity's e-mails: a subject, a plain-text and an HTML part, links escaped, no PHI."""

from __future__ import annotations

from identity import emails


def test_an_email_has_a_subject_a_text_and_an_html_part() -> None:
    subject, text, html = emails.render(
        emails.Email("password_changed", link="https://id.example.org/password/forgot"),
        service="Example Clinic",
    )
    assert subject == "Your password was changed"
    assert "https://id.example.org/password/forgot" in text
    assert "Example Clinic" in text
    assert '<a href="https://id.example.org/password/forgot">' in html
    assert "\n" not in subject


def test_a_link_cannot_inject_markup_into_the_html_part() -> None:
    _, text, html = emails.render(
        emails.Email("password_changed", link='https://x.example/"><script>alert(1)</script>'),
        service="<b>Clinic</b>",
    )
    assert "<script>" not in html
    assert "<b>Clinic</b>" not in html
    # The plain-text part is not HTML: it shows what it was given.
    assert "<script>" in text


def test_every_text_template_has_an_html_twin() -> None:
    texts = {p.stem for p in emails.TEMPLATES.glob("*.txt")}
    htmls = {p.stem for p in emails.TEMPLATES.glob("*.html")} - {"base"}
    assert texts == htmls
    assert texts
