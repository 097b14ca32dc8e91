"""Passwords: the NIST SP 800-63B policy, Argon2id hashing, the dummy hash, re-hashing,
and hashing kept off the event loop."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from pathlib import Path
from typing import Any

import argon2
import pytest
from starlette.testclient import TestClient

from carebridge.settings import Settings
from identity.accounts import normalise_login
from identity.credentials import password
from tests.identity.verification_mail import signed_up

FAST = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
LOGIN = normalise_login("Jane.Doe@Example.org")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def fast() -> Settings:
    return Settings(**FAST)


def problem(text: str, *, min_length: int = 8) -> str | None:
    return password.policy_problem(text, login=LOGIN, min_length=min_length)


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every Argon2 hash and verify: which parameters, and whether an event loop was
    running in the thread that did it."""
    calls: list[dict[str, Any]] = []
    original_hash, original_verify = argon2.PasswordHasher.hash, argon2.PasswordHasher.verify

    def record(kind: str, hasher: argon2.PasswordHasher) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        calls.append(
            {
                "kind": kind,
                "memory": hasher.memory_cost,
                "time": hasher.time_cost,
                "on_loop": on_loop,
                "thread": threading.current_thread().name,
                "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
            }
        )

    def hash_(self: argon2.PasswordHasher, secret: str | bytes, **kw: Any) -> str:
        record("hash", self)
        return original_hash(self, secret, **kw)

    def verify(self: argon2.PasswordHasher, hash: str | bytes, secret: str | bytes) -> bool:
        record("verify", self)
        return original_verify(self, hash, secret)

    monkeypatch.setattr(argon2.PasswordHasher, "hash", hash_)
    monkeypatch.setattr(argon2.PasswordHasher, "verify", verify)
    return calls


# Policy


def test_minimum_length_comes_from_settings() -> None:
    assert problem("seven77") == "Your password must be at least 8 characters long."
    assert problem("tiny lake") is None
    assert problem("tiny blue lake", min_length=15) is not None
    assert problem("tiny blue lake!", min_length=15) is None


def test_long_passwords_are_accepted_up_to_the_cap() -> None:
    words = "plum orbit canyon velvet "
    assert problem((words * 3)[:64]) is None
    assert problem((words * 50)[:1024]) is None
    assert problem((words * 50)[:1025]) == "Your password must be at most 1024 characters long."


def test_no_composition_rules() -> None:
    assert problem("all lower case words") is None
    assert problem("0193847562") is None  # digits only, not a common one


def test_spaces_are_kept_not_stripped() -> None:
    settings = fast()
    stored = password.hash_password(settings, " quiet harbour lamp ")
    assert password.verify(settings, stored, " quiet harbour lamp ").ok
    assert not password.verify(settings, stored, "quiet harbour lamp").ok
    assert not password.verify(settings, stored, "quiet  harbour lamp").ok


def test_password_is_compared_in_nfkc_form() -> None:
    settings = fast()
    fullwidth = "quiet harbour".translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    stored = password.hash_password(settings, fullwidth.replace(" ", "\u3000"))
    assert password.verify(settings, stored, "quiet harbour").ok
    decomposed = "cafe\u0301 au lait"  # e + combining acute
    stored = password.hash_password(settings, decomposed)
    assert password.verify(settings, stored, "caf\u00e9 au lait").ok
    # Length is counted on the normalised text: "ﬃ" is one character, NFKC makes it three.
    assert problem("\ufb03" * 3) is None


@pytest.mark.parametrize(
    "common", ["password", "PASSWORD", "Password1234", "baseball", "iloveyou", "CareBridge"]
)
def test_common_passwords_are_refused_whatever_their_case(common: str) -> None:
    assert problem(common) == password.TOO_COMMON


@pytest.mark.parametrize(
    "containing",
    [
        "jane.doe@example.org",
        "JANE.DOE@EXAMPLE.ORG!!",
        "my jane.doe@example.org pw",
        "jane.doe2026",
    ],
)
def test_password_containing_the_login_is_refused(containing: str) -> None:
    assert problem(containing) == password.CONTAINS_LOGIN


def test_blocklist_ships_with_its_licence_and_lowercase_entries() -> None:
    path = Path(password.__file__).with_name("password_blocklist.txt")
    text = path.read_text("utf-8")
    assert "zxcvbn" in text and "MIT License" in text and "Daniel Wolf" in text
    entries = password.blocklist()
    assert len(entries) > 10_000
    assert all(entry == entry.lower() and len(entry) >= 8 for entry in entries)
    assert {"carebridge", "password1234"} <= entries


# Hashing


def test_hash_is_argon2id_with_the_configured_parameters() -> None:
    stored = password.hash_password(fast(), "quiet harbour lamp")
    assert re.fullmatch(r"\$argon2id\$v=19\$m=8192,t=1,p=1\$[^$]+\$[^$]+", stored)


def test_same_password_hashes_differently_each_time() -> None:
    settings = fast()
    assert password.hash_password(settings, "quiet harbour") != password.hash_password(
        settings, "quiet harbour"
    )


def test_unknown_account_costs_one_verify_with_the_same_parameters(
    argon2_calls: list[dict[str, Any]],
) -> None:
    settings = fast()
    stored = password.hash_password(settings, "quiet harbour lamp")
    password.verify(settings, None, "warm-up: the dummy hash is made once")
    argon2_calls.clear()

    assert not password.verify(settings, stored, "wrong guess here").ok
    assert not password.verify(settings, None, "wrong guess here").ok
    known, unknown = argon2_calls
    assert known["kind"] == unknown["kind"] == "verify"
    assert (known["memory"], known["time"]) == (unknown["memory"], unknown["time"]) == (8192, 1)


def test_a_malformed_stored_hash_fails_closed() -> None:
    settings = fast()
    for stored in ("", "plaintext", "$argon2id$v=19$m=8192,t=1,p=1$broken"):
        assert password.verify(settings, stored, "plaintext") == password.Checked(ok=False)


def test_rehash_is_offered_when_the_parameters_change() -> None:
    old, new = fast(), Settings(argon2_memory_kib=9216, argon2_time_cost=2)
    stored = password.hash_password(old, "quiet harbour lamp")
    assert password.verify(old, stored, "quiet harbour lamp") == password.Checked(ok=True)
    checked = password.verify(new, stored, "quiet harbour lamp")
    assert checked.ok and checked.new_hash is not None
    assert "$m=9216,t=2,p=1$" in checked.new_hash
    assert password.verify(new, checked.new_hash, "quiet harbour lamp") == password.Checked(ok=True)
    # A wrong password never yields a new hash.
    assert password.verify(new, stored, "wrong") == password.Checked(ok=False)


def test_hashing_never_runs_on_the_event_loop(
    client: TestClient, argon2_calls: list[dict[str, Any]]
) -> None:
    body = {"login": "jane@example.org", "password": "quiet harbour lamp"}
    signed_up(client, body["login"], body["password"])
    assert client.post("/api/v1/signin", json=body).status_code == 200
    assert (
        client.post("/api/v1/signin", json={**body, "login": "nobody@example.org"}).status_code
        == 401
    )
    kinds = [call["kind"] for call in argon2_calls]
    assert kinds.count("hash") >= 1 and kinds.count("verify") >= 2
    assert not any(call["on_loop"] for call in argon2_calls), argon2_calls
    # In the hashing pool, at a lower priority than the event loop and request threads.
    assert all(call["thread"].startswith("argon2") for call in argon2_calls), argon2_calls
    assert all(call["nice"] >= 10 for call in argon2_calls), argon2_calls
