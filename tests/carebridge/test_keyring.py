"""The keyring: envelope encryption, signing keys and the JWKS, rotation, the key file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from carebridge import keyring
from carebridge.keyring import (
    DecryptionError,
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    SigningAlg,
    associated_data,
)
from carebridge.runtime import Runtime, load_keyring
from carebridge.settings import Environment, Settings

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
THREAD_1 = associated_data("thread", "t-1")
THREAD_2 = associated_data("thread", "t-2")


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring.generate(development=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_strings(path: Path) -> list[str]:
    """Every secret value a keyring file holds, as it is written there."""
    document = json.loads(path.read_text())
    found = [document["pepper"], *(k["secret"] for k in document["kek"])]
    for entry in document["signing"]:
        found += [v for name, v in entry["jwk"].items() if name in PRIVATE_JWK_MEMBERS]
    return found


# Encryption under the keyring's KEKs


def test_secret_is_aes_256_gcm_under_the_active_kek_with_a_96_bit_nonce(ring: Keyring) -> None:
    blob = ring.encrypt(b"totp seed", THREAD_1)
    kid = ring.active_kek.kid.encode()
    header = bytes([1, len(kid)]) + kid
    assert blob.startswith(header)
    nonce, body = blob[len(header) : len(header) + 12], blob[len(header) + 12 :]
    # Opened independently of the keyring: the layout and the algorithm are what they claim.
    assert len(ring.active_kek.secret) == 32
    assert AESGCM(ring.active_kek.secret).decrypt(nonce, body, header + THREAD_1) == b"totp seed"
    assert ring.decrypt(blob, THREAD_1) == b"totp seed"


def test_every_encryption_uses_a_fresh_nonce(ring: Keyring) -> None:
    header = 2 + len(ring.active_kek.kid)
    blobs = [ring.encrypt(b"same plaintext", THREAD_1) for _ in range(200)]
    assert len({blob[header : header + 12] for blob in blobs}) == 200
    assert len(set(blobs)) == 200


def test_ciphertext_moved_to_another_record_fails(ring: Keyring) -> None:
    blob = ring.encrypt(b"secret of thread 1", THREAD_1)
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, THREAD_2)


def test_wrapped_data_key_moved_to_another_record_fails(ring: Keyring) -> None:
    data_key = keyring.new_data_key()
    wrapped = ring.wrap_data_key(data_key, THREAD_1)
    assert ring.unwrap_data_key(wrapped, THREAD_1) == data_key
    with pytest.raises(DecryptionError):
        ring.unwrap_data_key(wrapped, THREAD_2)


def test_wrapped_data_key_cannot_be_opened_as_a_plain_secret(ring: Keyring) -> None:
    # The same record ID in a different role must not open the data key.
    wrapped = ring.wrap_data_key(keyring.new_data_key(), THREAD_1)
    with pytest.raises(DecryptionError):
        ring.decrypt(wrapped, THREAD_1)


def test_sealed_content_moved_to_another_record_fails() -> None:
    data_key = keyring.new_data_key()
    blob = keyring.seal(data_key, b"message body", THREAD_1)
    assert keyring.open_sealed(data_key, blob, THREAD_1) == b"message body"
    with pytest.raises(DecryptionError):
        keyring.open_sealed(data_key, blob, THREAD_2)


def test_sealed_content_opens_only_under_its_own_data_key() -> None:
    blob = keyring.seal(keyring.new_data_key(), b"message body", THREAD_1)
    with pytest.raises(DecryptionError):
        keyring.open_sealed(keyring.new_data_key(), blob, THREAD_1)


def test_sealed_content_uses_a_fresh_nonce_per_message() -> None:
    data_key = keyring.new_data_key()
    nonces = {keyring.seal(data_key, b"hi", THREAD_1)[1:13] for _ in range(200)}
    assert len(nonces) == 200


def test_any_flipped_byte_is_rejected(ring: Keyring) -> None:
    blob = ring.encrypt(b"secret", THREAD_1)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError):
            ring.decrypt(bytes(tampered), THREAD_1)


def test_any_truncation_is_rejected(ring: Keyring) -> None:
    blob = ring.encrypt(b"secret", THREAD_1)
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            ring.decrypt(blob[:length], THREAD_1)


def test_sealed_content_with_a_flipped_byte_is_rejected() -> None:
    data_key = keyring.new_data_key()
    blob = keyring.seal(data_key, b"message body", THREAD_1)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x80
        with pytest.raises(DecryptionError):
            keyring.open_sealed(data_key, bytes(tampered), THREAD_1)


def test_associated_data_parts_cannot_be_shifted_across_boundaries(ring: Keyring) -> None:
    assert associated_data("ab", "c") != associated_data("a", "bc")
    assert associated_data("a", "") != associated_data("a")
    blob = ring.encrypt(b"secret", associated_data("thread", "1", "2"))
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, associated_data("thread1", "2"))


def test_ciphertext_from_another_keyring_does_not_open(ring: Keyring) -> None:
    blob = Keyring.generate(development=True).encrypt(b"secret", THREAD_1)
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, THREAD_1)


def test_a_kek_forged_under_a_known_key_id_does_not_open(ring: Keyring) -> None:
    forged = KeyEncryptionKey(ring.active_kek.kid, AESGCM.generate_key(256), "2026-01-01")
    impostor = Keyring([forged], ring.signing, b"p" * 32, development=True)
    blob = impostor.encrypt(b"attacker's data", THREAD_1)
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, THREAD_1)


def test_reprs_hide_secret_material(ring: Keyring) -> None:
    kek = ring.active_kek
    assert repr(kek.secret) not in repr(kek)
    assert kek.secret.hex() not in repr(kek)
    private = ring.active_signing_key.key.as_dict(private=True)["d"]
    assert private not in repr(ring.active_signing_key)


# Signing keys and the JWKS


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_jwks_never_publishes_private_members(alg: SigningAlg) -> None:
    ring = Keyring.generate(development=False, alg=alg)
    jwks = ring.jwks()
    (published,) = jwks["keys"]
    assert not PRIVATE_JWK_MEMBERS & published.keys()
    private = ring.active_signing_key.key.as_dict(private=True)
    assert private["d"] not in json.dumps(jwks)
    assert (published["kid"], published["alg"], published["use"]) == (
        ring.active_signing_key.kid,
        alg,
        "sig",
    )


def test_jwks_lists_the_current_and_previous_keys_newest_first(ring: Keyring) -> None:
    rotated = ring.rotated()
    kids = [key["kid"] for key in rotated.jwks()["keys"]]
    assert kids == [rotated.active_signing_key.kid, ring.active_signing_key.kid]
    assert rotated.active_signing_key.kid != ring.active_signing_key.kid


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_token_signed_before_rotation_verifies_against_the_new_jwks(alg: SigningAlg) -> None:
    before = Keyring.generate(development=False, alg=alg)
    old = before.active_signing_key
    token = jwt.encode({"alg": old.alg, "kid": old.kid}, {"sub": "patient-1"}, old.key)
    after = Keyring.from_json(before.rotated().to_json())
    published = KeySet.import_key_set(after.jwks())
    assert jwt.decode(token, published).claims == {"sub": "patient-1"}
    assert jwt.decode(token, after.verification_keys()).claims == {"sub": "patient-1"}
    new = after.active_signing_key
    fresh = jwt.encode({"alg": new.alg, "kid": new.kid}, {"sub": "patient-2"}, new.key)
    assert jwt.decode(fresh, published).claims == {"sub": "patient-2"}


def test_token_signed_by_an_outside_key_under_a_published_kid_fails(ring: Keyring) -> None:
    kid = ring.active_signing_key.kid
    forged = jwt.encode(
        {"alg": "ES256", "kid": kid},
        {"sub": "admin"},
        ECKey.generate_key("P-256", private=True),
    )
    with pytest.raises(JoseError):
        jwt.decode(forged, KeySet.import_key_set(ring.jwks()))


def test_rotation_can_switch_the_signing_algorithm(ring: Keyring) -> None:
    rotated = ring.rotated("RS256")
    assert rotated.active_signing_key.alg == "RS256"
    assert [key["alg"] for key in rotated.jwks()["keys"]] == ["RS256", "ES256"]
    # Without an explicit choice the next rotation keeps the current algorithm.
    assert rotated.rotated().active_signing_key.alg == "RS256"


# Rotation of the KEKs


def test_data_encrypted_before_rotation_stays_readable(ring: Keyring, tmp_path: Path) -> None:
    old_blob = ring.encrypt(b"written before rotation", THREAD_1)
    wrapped = ring.wrap_data_key(b"k" * 32, THREAD_1)
    path = tmp_path / "keyring.json"
    keyring.save(ring.rotated(), path)
    rotated = keyring.load(path)
    assert rotated.decrypt(old_blob, THREAD_1) == b"written before rotation"
    assert rotated.unwrap_data_key(wrapped, THREAD_1) == b"k" * 32
    new_blob = rotated.encrypt(b"written after", THREAD_1)
    assert rotated.key_id_of(new_blob) == rotated.active_kek.kid != ring.active_kek.kid
    assert rotated.key_id_of(old_blob) == ring.active_kek.kid
    # The old keyring cannot read what the new KEK encrypted.
    with pytest.raises(DecryptionError):
        ring.decrypt(new_blob, THREAD_1)


def test_rotation_keeps_the_pepper_and_the_environment(ring: Keyring) -> None:
    rotated = ring.rotated()
    assert rotated.lookup_hash("email", "a@example.org") == ring.lookup_hash(
        "email", "a@example.org"
    )
    assert rotated.development is ring.development
    assert [k.kid for k in rotated.keks[:-1]] == [k.kid for k in ring.keks]


# Lookup hashes


def test_lookup_hashes_are_scoped_by_purpose(ring: Keyring) -> None:
    assert ring.lookup_hash("email", "555-0100") != ring.lookup_hash("phone", "555-0100")
    assert ring.lookup_hash("ab", "c") != ring.lookup_hash("a", "bc")
    assert ring.lookup_hash("phone", "555-0100") == ring.lookup_hash("phone", "555-0100")


def test_lookup_hashes_depend_on_the_pepper(ring: Keyring) -> None:
    other = Keyring.generate(development=True)
    assert ring.lookup_hash("email", "a@example.org") != other.lookup_hash("email", "a@example.org")


def test_a_short_pepper_is_refused(ring: Keyring) -> None:
    with pytest.raises(KeyringError):
        Keyring(ring.keks, ring.signing, b"p" * 31, development=True)


# The key file


def test_saved_keyring_reloads_with_the_same_keys(ring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(ring, path)
    loaded = keyring.load(path)
    assert loaded.decrypt(ring.encrypt(b"x", THREAD_1), THREAD_1) == b"x"
    assert loaded.jwks() == ring.jwks()
    assert loaded.lookup_hash("email", "a") == ring.lookup_hash("email", "a")
    assert loaded.development is True


def test_saved_keyring_is_owner_only_even_over_a_readable_file(
    ring: Keyring, tmp_path: Path
) -> None:
    path = tmp_path / "keys" / "keyring.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    keyring.save(ring, path)
    assert _mode(path) == 0o600


def test_saving_into_a_new_directory_makes_it_owner_only(ring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "var" / "keyring.json"
    keyring.save(ring, path)
    assert _mode(path.parent) == 0o700


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_save_leaves_the_old_file_whole(
    ring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(ring, path)
    before = path.read_bytes()

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keyring.os, failing, disk_full)
    with pytest.raises(KeyringError, match="cannot be written"):
        keyring.save(ring.rotated(), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keyring.json"]
    assert keyring.load(path).active_kek.kid == ring.active_kek.kid


def test_saving_where_a_file_blocks_the_directory_is_a_keyring_error(
    ring: Keyring, tmp_path: Path
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    path = tmp_path / "not-a-dir" / "keyring.json"
    with pytest.raises(KeyringError, match=str(path)):
        keyring.save(ring, path)


def test_save_without_overwrite_keeps_an_existing_file(ring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("operator's keyring")
    with pytest.raises(keyring.KeyringExistsError):
        keyring.save(ring, path, overwrite=False)
    assert path.read_text() == "operator's keyring"
    assert os.listdir(tmp_path) == ["keyring.json"]


def test_missing_keyring_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(KeyringError, match="does not exist") as raised:
        keyring.load(path)
    assert str(path) in str(raised.value)


def _corrupt(document: dict[str, Any], how: str) -> str | bytes:
    if how == "truncated":
        return json.dumps(document)[: len(json.dumps(document)) // 2]
    if how == "not utf-8":
        return b"\xff\xfe" + json.dumps(document).encode()
    if how == "wrong format":
        return json.dumps({**document, "format": "something-else/2"})
    if how == "short kek":
        document["kek"][0]["secret"] = document["kek"][0]["secret"][:20]
    elif how == "signing key without curve":
        del document["signing"][0]["jwk"]["crv"]
    elif how == "signing key without private part":
        del document["signing"][0]["jwk"]["d"]
    elif how == "development flag null":
        document["development"] = None
    elif how == "kek id not text":
        document["kek"][0]["kid"] = 7
    elif how == "no pepper":
        del document["pepper"]
    return json.dumps(document)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "not utf-8",
        "wrong format",
        "short kek",
        "signing key without curve",
        "signing key without private part",
        "development flag null",
        "kek id not text",
        "no pepper",
    ],
)
def test_corrupt_keyring_file_is_named_without_key_material(tmp_path: Path, how: str) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(Keyring.generate(development=False), path)
    secrets = secret_strings(path)
    corrupt = _corrupt(json.loads(path.read_text()), how)
    if isinstance(corrupt, bytes):
        path.write_bytes(corrupt)
    else:
        path.write_text(corrupt)
    with pytest.raises(KeyringError) as raised:
        keyring.load(path)
    message = str(raised.value)
    assert f"keyring file {path} is corrupt" in message
    assert "\n" not in message
    assert not [s for s in secrets if s[:8] in message]


def test_development_keyring_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keyring.json"
    first = keyring.load_or_create_development(path)
    assert first.development
    assert _mode(path) == 0o600
    again = keyring.load_or_create_development(path)
    assert again.active_kek.kid == first.active_kek.kid
    assert again.jwks() == first.jwks()


def test_development_keyring_made_concurrently_by_another_process_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keyring.json"
    winner = Keyring.generate(development=True)
    generate = Keyring.generate

    def racing(*, development: bool, alg: SigningAlg = "ES256") -> Keyring:
        # The other process saves its keyring between our exists() check and our save.
        keyring.save(winner, path)
        return generate(development=development, alg=alg)

    monkeypatch.setattr(Keyring, "generate", racing)
    ours = keyring.load_or_create_development(path)
    assert ours.active_kek.kid == winner.active_kek.kid
    assert keyring.load(path).active_kek.kid == winner.active_kek.kid


# Which keyring a process uses


def _production(tmp_path: Path, keyring_file: Path | None) -> Settings:
    return Settings(
        env=Environment.PRODUCTION,
        data_dir=tmp_path / "data",
        keyring_file=keyring_file,
    )


def test_production_refuses_a_development_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(Keyring.generate(development=True), path)
    with pytest.raises(KeyringError, match="development") as raised:
        load_keyring(_production(tmp_path, path))
    assert str(path) in str(raised.value)


def test_production_loads_a_generated_production_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    made = Keyring.generate(development=False)
    keyring.save(made, path)
    assert load_keyring(_production(tmp_path, path)).active_kek.kid == made.active_kek.kid


def test_production_never_generates_a_keyring(tmp_path: Path) -> None:
    settings = _production(tmp_path, None)
    with pytest.raises(KeyringError, match="CAREBRIDGE_KEYRING_FILE"):
        load_keyring(settings)
    assert not settings.effective_keyring_file.exists()


def test_a_named_keyring_file_that_is_missing_is_not_generated(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    with pytest.raises(KeyringError, match="does not exist"):
        load_keyring(Settings(data_dir=tmp_path / "data", keyring_file=path))
    assert not path.exists()


def test_runtime_keeps_generated_keys_and_database_owner_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    runtime = Runtime.build(settings)
    first_kid = runtime.keyring.active_kek.kid
    runtime.close()
    assert _mode(settings.data_dir) == 0o700
    assert _mode(settings.effective_keyring_file) == 0o600
    # A second process start uses the same keys, not new ones.
    again = Runtime.build(settings)
    again.close()
    assert again.keyring.active_kek.kid == first_kid
