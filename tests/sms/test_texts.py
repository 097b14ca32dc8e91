"""What a notice says with the care team's name in it: the link always fits, and a name
cannot carry line breaks or markup into an SMS, a call or an e-mail's headers."""

from __future__ import annotations

from sms import texts, twilio_client

URL = "https://notify.example.org/l/" + "a" * 22


def test_a_long_team_name_is_dropped_before_the_link() -> None:
    sms = texts.new_message_sms("carebridge", URL, 3, "Northside " * 30)
    assert URL in sms
    assert len(sms) <= texts.SMS_LIMIT
    assert "Northside" not in sms  # too long to name in one segment: generic


def test_a_team_name_crafted_to_inject_e_mail_headers_is_refused() -> None:
    subject, text = texts.new_message_email(
        "carebridge", URL, 1, "Clinic\r\nBcc: attacker@example.org"
    )
    assert "\r" not in subject and "\n" not in subject
    assert (
        subject == "carebridge: You have a new secure message from Clinic Bcc: attacker@example.org"
    )
    assert URL in text


def test_a_team_name_crafted_as_twiml_is_refused() -> None:
    spoken = texts.voice_notice("carebridge", "+15005550100", "</Say><Dial>+15555550100</Dial>")
    twiml = twilio_client.say_twiml(spoken)
    assert "<Dial>" not in twiml
    assert "&lt;/Say&gt;" in twiml
