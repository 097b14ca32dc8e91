"""All key material in one place: key-encryption keys, JWT signing keys, the lookup pepper.

The keyring is a JSON file (0600). Development generates one on first start; production
reads the file an operator made with ``carebridge keys generate`` (see docs/operations.md).

- Key-encryption keys (KEKs) are 256-bit AES-GCM keys with IDs. The newest encrypts; all
  decrypt, so ``keys rotate`` never strands data.
- Envelope encryption: a record (a thread, later) gets its own data key, stored wrapped
  by the current KEK; content is sealed under the data key. Both layers use AES-256-GCM
  with a random 96-bit nonce and associated data that binds the ciphertext to the record
  it protects, so a ciphertext moved to another row fails to open.
- Signing keys (ES256 by default, RS256 available) sign tokens; the newest signs, all are
  published in the JWKS so tokens signed before a rotation still verify.
- The pepper keys HMAC-SHA256 lookup hashes of values never stored in plaintext. It is
  not rotated by ``keys rotate``: every stored lookup hash depends on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from carebridge.utc import utcnow

FORMAT = "carebridge-keyring/1"
SigningAlg = Literal["ES256", "RS256"]
_BLOB_VERSION = 1
_NONCE_BYTES = 12


class KeyringError(Exception):
    """The keyring is missing, unreadable or malformed; the message names the file."""


class KeyringExistsError(KeyringError):
    """A keyring file is already there; it is never replaced by a new one."""


class DecryptionError(Exception):
    """Ciphertext that does not open under this keyring with this associated data."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _timestamp() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


def associated_data(*parts: str) -> bytes:
    """Unambiguous associated data from record identifiers: each part length-prefixed."""
    out = b""
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(2, "big") + raw
    return out


def _aead(key: bytes | AESGCM) -> AESGCM:
    # A caller opening many records under one key passes the AESGCM object it keeps.
    return key if isinstance(key, AESGCM) else AESGCM(key)


def _seal(key: bytes | AESGCM, header: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    # The header (version, key ID) is authenticated too: it cannot be swapped.
    return header + nonce + _aead(key).encrypt(nonce, plaintext, header + aad)


def _open(key: bytes | AESGCM, header: bytes, body: bytes, aad: bytes) -> bytes:
    if len(body) < _NONCE_BYTES + 16:
        raise DecryptionError("ciphertext is truncated")
    nonce, ciphertext = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
    try:
        return _aead(key).decrypt(nonce, ciphertext, header + aad)
    except InvalidTag:
        raise DecryptionError("ciphertext does not open with this key and context") from None


def seal(data_key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt content under a record's own data key."""
    return _seal(data_key, bytes([_BLOB_VERSION]), plaintext, aad)


def open_sealed(data_key: bytes | AESGCM, blob: bytes, aad: bytes) -> bytes:
    if not blob or blob[0] != _BLOB_VERSION:
        raise DecryptionError("unknown ciphertext format")
    return _open(data_key, blob[:1], blob[1:], aad)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


@dataclass(frozen=True)
class KeyEncryptionKey:
    kid: str
    secret: bytes = field(repr=False)
    created: str


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: SigningAlg
    key: ECKey | RSAKey = field(repr=False)
    created: str

    @classmethod
    def generate(cls, alg: SigningAlg) -> SigningKey:
        key: ECKey | RSAKey
        if alg == "ES256":
            key = ECKey.generate_key("P-256", private=True)
        else:
            key = RSAKey.generate_key(3072, private=True)
        return cls(kid=key.thumbprint(), alg=alg, key=key, created=_timestamp())

    def public_jwk(self) -> dict[str, Any]:
        jwk = self.key.as_dict(private=False)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


class Keyring:
    def __init__(
        self,
        keks: list[KeyEncryptionKey],
        signing: list[SigningKey],
        pepper: bytes,
        *,
        development: bool,
    ) -> None:
        if not keks or not signing or len(pepper) < 32:
            raise KeyringError("a keyring needs a KEK, a signing key and a 32-byte pepper")
        self.keks = keks
        self.signing = signing
        self.development = development
        self._pepper = pepper
        self._kek_by_id = {kek.kid: kek for kek in keks}

    # Generation and rotation

    @classmethod
    def generate(cls, *, development: bool, alg: SigningAlg = "ES256") -> Keyring:
        return cls(
            [_new_kek()],
            [SigningKey.generate(alg)],
            secrets.token_bytes(32),
            development=development,
        )

    def rotated(self, alg: SigningAlg | None = None) -> Keyring:
        """A keyring with a new active KEK and signing key, keeping every older key."""
        signing = SigningKey.generate(alg or self.active_signing_key.alg)
        return Keyring(
            [*self.keks, _new_kek()],
            [*self.signing, signing],
            self._pepper,
            development=self.development,
        )

    # Encryption under the keyring's own keys

    @property
    def active_kek(self) -> KeyEncryptionKey:
        return self.keks[-1]

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt a small secret (a data key, a TOTP seed) under the active KEK."""
        kek = self.active_kek
        kid = kek.kid.encode("ascii")
        header = bytes([_BLOB_VERSION, len(kid)]) + kid
        return _seal(kek.secret, header, plaintext, aad)

    def encryptor(self) -> Callable[[bytes, bytes], bytes]:
        """``encrypt`` for many records in a row (a roster import): one AES-GCM key setup."""
        kek = self.active_kek
        kid = kek.kid.encode("ascii")
        header = bytes([_BLOB_VERSION, len(kid)]) + kid
        aead = AESGCM(kek.secret)

        def encrypt(plaintext: bytes, aad: bytes) -> bytes:
            nonce = os.urandom(_NONCE_BYTES)
            return header + nonce + aead.encrypt(nonce, plaintext, header + aad)

        return encrypt

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 2 or blob[0] != _BLOB_VERSION:
            raise DecryptionError("unknown ciphertext format")
        end = 2 + blob[1]
        kek = self._kek_by_id.get(blob[2:end].decode("ascii", "replace"))
        if kek is None:
            raise DecryptionError("ciphertext names a key this keyring does not hold")
        return _open(kek.secret, blob[:end], blob[end:], aad)

    def key_id_of(self, blob: bytes) -> str:
        """Which KEK encrypted a blob (to find what a rotation left to re-wrap)."""
        if len(blob) < 2 or blob[0] != _BLOB_VERSION or len(blob) < 2 + blob[1]:
            raise DecryptionError("unknown ciphertext format")
        return blob[2 : 2 + blob[1]].decode("ascii", "replace")

    def wrap_data_key(self, data_key: bytes, aad: bytes) -> bytes:
        return self.encrypt(data_key, associated_data("data-key") + aad)

    def unwrap_data_key(self, wrapped: bytes, aad: bytes) -> bytes:
        return self.decrypt(wrapped, associated_data("data-key") + aad)

    # Signing keys

    @property
    def active_signing_key(self) -> SigningKey:
        return self.signing[-1]

    def verification_keys(self) -> KeySet:
        return KeySet([key.key for key in self.signing])

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public half of every signing key, newest first."""
        return {"keys": [key.public_jwk() for key in reversed(self.signing)]}

    # Keyed lookup hashes

    def lookup_hash(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of a normalized value, scoped by purpose so hashes don't cross uses."""
        message = associated_data(purpose, value)
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    def lookup_hasher(self, purpose: str) -> Callable[[str], str]:
        """``lookup_hash`` for many values of one purpose (a roster import): the HMAC is
        keyed and fed the purpose once, then copied per value."""
        keyed = hmac.new(self._pepper, associated_data(purpose), hashlib.sha256)

        def lookup_hash(value: str) -> str:
            mac = keyed.copy()
            mac.update(associated_data(value))
            return mac.hexdigest()

        return lookup_hash

    # Serialization

    def to_json(self) -> str:
        document = {
            "format": FORMAT,
            "development": self.development,
            "pepper": _b64e(self._pepper),
            "kek": [
                {"kid": k.kid, "created": k.created, "secret": _b64e(k.secret)} for k in self.keks
            ],
            "signing": [
                {
                    "kid": s.kid,
                    "alg": s.alg,
                    "created": s.created,
                    "jwk": s.key.as_dict(private=True),
                }
                for s in self.signing
            ],
        }
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        # A null or "false" flag would otherwise pass for a production keyring, or block one.
        if not isinstance(document.get("development"), bool):
            raise ValueError("'development' must be true or false")
        keks = [_kek_from(k) for k in document["kek"]]
        signing = [_signing_key_from(s) for s in document["signing"]]
        return cls(keks, signing, _b64d(document["pepper"]), development=document["development"])


def _new_kek() -> KeyEncryptionKey:
    created = _timestamp()
    kid = f"kek-{created[:10].replace('-', '')}-{secrets.token_hex(4)}"
    return KeyEncryptionKey(kid, AESGCM.generate_key(bit_length=256), created)


def _kek_from(entry: dict[str, Any]) -> KeyEncryptionKey:
    kid, secret = entry["kid"], _b64d(entry["secret"])
    # Every ciphertext header carries the ID as one length-prefixed ASCII field: a bad ID
    # must fail here, naming the file, not at the first encryption.
    if not isinstance(kid, str) or not kid.isascii() or not 0 < len(kid) < 256:
        raise ValueError("every KEK ID must be 1 to 255 ASCII characters")
    if len(secret) != 32:
        raise ValueError("every KEK must be 256 bits")
    return KeyEncryptionKey(kid, secret, entry["created"])


def _signing_key_from(entry: dict[str, Any]) -> SigningKey:
    alg = entry["alg"]
    key: ECKey | RSAKey
    if alg == "ES256":
        key = ECKey.import_key(entry["jwk"])
    elif alg == "RS256":
        key = RSAKey.import_key(entry["jwk"])
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    if not key.is_private:
        raise ValueError(f"signing key {entry['kid']} has no private part")
    return SigningKey(entry["kid"], alg, key, entry["created"])


def load(path: Path) -> Keyring:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyringError(f"keyring file {path} does not exist") from None
    except UnicodeDecodeError:
        # Its message quotes the offending byte: say less.
        raise KeyringError(f"keyring file {path} is corrupt: not UTF-8 text") from None
    except OSError as exc:
        raise KeyringError(f"keyring file {path} cannot be read: {exc.strerror}") from None
    try:
        return Keyring.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError, KeyringError, JoseError) as exc:
        # The reason names a field or a type, never a key's value.
        reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise KeyringError(f"keyring file {path} is corrupt: {reason}") from None


def save(keyring: Keyring, path: Path, *, overwrite: bool = True) -> None:
    """Write atomically with mode 0600: a crash leaves the old file or the new, never half.

    With ``overwrite=False`` an existing file wins (:class:`KeyringExistsError`), even one
    another process created a moment ago.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # A directory made for key material is owner-only (the SQLite database joins it).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except OSError as exc:
        raise KeyringError(f"keyring file {path} cannot be written: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(keyring.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() refuses an existing name atomically; an exists() check first would race.
            os.link(tmp, path)
    except FileExistsError:
        raise KeyringExistsError(f"keyring file {path} already exists") from None
    except OSError as exc:
        raise KeyringError(f"keyring file {path} cannot be written: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the new name durable: a crash after the rename must not bring the old file back
    (a key wrapped under the new KEK meanwhile would not open)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform without directory descriptors: nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself stands
    finally:
        os.close(fd)


def load_or_create_development(path: Path) -> Keyring:
    """Development only: generate a keyring the first time, then keep using it."""
    if path.exists():
        return load(path)
    keyring = Keyring.generate(development=True)
    try:
        save(keyring, path, overwrite=False)
    except KeyringExistsError:
        # Another process (serve and worker starting together) made one first. Use it:
        # replacing it would strand whatever that process already encrypted.
        return load(path)
    return keyring
