"""Phone numbers: parsed and normalised to E.164, encrypted at rest, matched by hash."""

from __future__ import annotations

import phonenumbers

from carebridge.i18n import N_
from carebridge.keyring import Keyring, associated_data


class InvalidNumberError(ValueError):
    """Not a valid phone number of a region this deployment serves (the message is ours)."""


def normalize(raw: str, regions: str) -> str:
    """The E.164 form of what a patient typed, or InvalidNumberError saying what is wrong."""
    allowed = regions.split(",")
    text = raw.strip()
    if not text or len(text) > 32:
        raise InvalidNumberError(N_("Enter a phone number, like 555 123 4567."))
    try:
        number = phonenumbers.parse(text, allowed[0])
    except phonenumbers.NumberParseException:
        raise InvalidNumberError(N_("Enter a phone number, like 555 123 4567.")) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumberError(N_("That is not a valid phone number."))
    if phonenumbers.region_code_for_number(number) not in allowed:
        raise InvalidNumberError(N_("We can only send to phone numbers in the regions we serve."))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def number_hash(keyring: Keyring, e164: str) -> str:
    return keyring.lookup_hash("phone-number", e164)


def _aad(contact_id: str, patient_id: str) -> bytes:
    return associated_data("contact-point", contact_id, patient_id)


def encrypt(keyring: Keyring, e164: str, *, contact_id: str, patient_id: str) -> bytes:
    return keyring.encrypt(e164.encode("ascii"), _aad(contact_id, patient_id))


def decrypt(keyring: Keyring, blob: bytes, *, contact_id: str, patient_id: str) -> str:
    return keyring.decrypt(blob, _aad(contact_id, patient_id)).decode("ascii")
