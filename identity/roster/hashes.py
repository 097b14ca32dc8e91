"""Keyed lookup hashes of roster values: one normalisation, shared by import and verification.

Every value is hashed with the keyring's pepper (HMAC-SHA256) under its own purpose, so a
DOB hash never matches anything but a DOB hash. Build one :class:`RosterHashes` per batch
of work: it sets the HMAC key up once per purpose.
"""

from __future__ import annotations

import unicodedata
from datetime import date

from carebridge.keyring import Keyring


def normalise_last_name(name: str) -> str:
    """Case, accents, spaces and punctuation don't matter: "O'Brien-Müller" = "obrienmuller"."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in decomposed.casefold() if ch.isalnum())


def normalise_zip(zip_code: str) -> str:
    """The five-digit ZIP code (a ZIP+4 matches its ZIP)."""
    return zip_code.strip()[:5]


class RosterHashes:
    def __init__(self, keyring: Keyring) -> None:
        self._member = keyring.lookup_hasher("roster-member")
        self._identity = keyring.lookup_hasher("dob-ssn4")
        self._dob = keyring.lookup_hasher("dob")
        self._last_name = keyring.lookup_hasher("last-name")
        self._zip = keyring.lookup_hasher("zip")

    def member_key(self, source: str, member_id: str) -> str:
        """Finds a source's member again on the next import."""
        return self._member(f"{source}\x00{member_id}")

    def identity(self, dob: date, ssn4: str) -> str:
        """What verification looks a person up by (several people may share it)."""
        return self._identity(f"{dob.isoformat()}|{ssn4}")

    def dob(self, dob: date) -> str:
        return self._dob(dob.isoformat())

    def last_name(self, last_name: str) -> str:
        return self._last_name(normalise_last_name(last_name))

    def zip(self, zip_code: str) -> str:
        return self._zip(normalise_zip(zip_code))
