"""``carebridge keys``: key generation, rotation and listing (never printing secrets).

A rotation changes the keyring in use, so it is audited (``keys.rotate``, the new key
IDs only). The keyring is a file and the audit log is in the database, which may be
elsewhere: the record is committed first, then the file replaced. No database, no
rotation: a key change nobody can account for afterwards is worse than one made an hour
later (the service cannot run without its database either).

The file, once replaced, is never put back: a process that loaded the rotated keyring may
already have wrapped a key under its new KEK, which only the rotated keyring unwraps
(and it keeps every older key, so keeping it is always safe). A file that cannot be
written after the record committed gets a second record, ``keys.rotate`` with outcome
``failed``: the rotation did not happen.

One rotation at a time: a rotation holds an exclusive lock (``flock`` on ``<keyring>.lock``
beside the file) from reading the keyring to writing it, and reads it under the lock; two
overlapping ones would both start from the same keyring, and the later write would drop
the earlier one's KEK, under which a replica may already have wrapped keys. The lock holds
between processes on one host (or one shared filesystem that honours ``flock``).

``generate`` is not audited: it only ever creates a new file, never replacing a keyring,
and runs before a database may exist.
"""

from __future__ import annotations

import argparse
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from carebridge import audit, keyring
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.db import describe_error, outcome_unknown, transaction
from carebridge.runtime import Runtime, load_keyring
from carebridge.settings import load_settings

OPERATOR = "operator"


def register(commands: Any) -> None:
    group = add_parser(commands, "keys", "Key-encryption and signing keys.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    rotate_cmd = add_parser(
        sub, "rotate", "Add a new KEK and signing key; older keys stay for decryption and JWKS."
    )
    rotate_cmd.add_argument("--alg", choices=["ES256", "RS256"], help="new signing key algorithm")
    rotate_cmd.add_argument(
        "--rewrap",
        action="store_true",
        help="then re-wrap every message thread's data key under the new KEK",
    )
    rotate_cmd.set_defaults(handler=rotate)

    generate_cmd = add_parser(sub, "generate", "Write a new production keyring file (mode 0600).")
    generate_cmd.add_argument("--out", type=Path, required=True, help="file to create")
    generate_cmd.add_argument("--alg", choices=["ES256", "RS256"], default="ES256")
    generate_cmd.set_defaults(handler=generate)

    add_parser(sub, "list", "List key IDs, kinds and ages.").set_defaults(handler=list_keys)


def _keyring_path() -> tuple[keyring.Keyring, Path]:
    settings = load_settings()
    return load_keyring(settings), settings.effective_keyring_file


@contextmanager
def _one_rotation_at_a_time(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        handle = lock.open("a")
    except OSError as exc:
        raise CommandError(f"keys not rotated: {lock} cannot be opened ({exc.strerror})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def rotate(args: argparse.Namespace) -> int:
    _, path = _keyring_path()  # a missing keyring is named (exit 2) before any lock file
    with _one_rotation_at_a_time(path):
        current, path = _keyring_path()  # read under the lock: the latest rotation's
        rotated = current.rotated(args.alg)
        _save_audited(rotated, path)
    print(f"rotated {path}")
    kept = len(rotated.keks) - 1
    print(f"  encryption key {rotated.active_kek.kid} now encrypts; {kept} older kept")
    signing = rotated.active_signing_key
    print(
        f"  signing key {signing.kid} ({signing.alg}) now signs; JWKS lists {len(rotated.signing)}"
    )
    if args.rewrap:
        _rewrap_threads()
    print("restart every replica so they all sign with the new key")
    return 0


def _save_audited(rotated: keyring.Keyring, path: Path) -> None:
    """Commit the rotation's audit record, then replace the keyring file; or change
    nothing, or (the file could not be written) record that it did not happen."""
    target = f"kek:{rotated.active_kek.kid} signing:{rotated.active_signing_key.kid}"
    rt = runtime()
    try:
        try:
            require_current_schema(rt)
            _record(rt, target, audit.Outcome.ALLOWED)
        except SQLAlchemyError as exc:
            if outcome_unknown(exc):
                raise CommandError(
                    "keys not rotated: the database connection was lost as the audit record "
                    f"committed; the log may hold a keys.rotate record for {target} that "
                    "never took effect"
                ) from None
            raise CommandError(
                f"keys not rotated: the audit log cannot be written ({describe_error(exc)})"
            ) from None
        try:
            keyring.save(rotated, path)
        except keyring.KeyringError as exc:
            _record_not_done(rt, target, exc)
    finally:
        rt.close()


def _record(rt: Runtime, target: str, outcome: audit.Outcome) -> None:
    with transaction(rt.sessions) as db:
        audit.append(db, actor=OPERATOR, action="keys.rotate", outcome=outcome, target=target)


def _record_not_done(rt: Runtime, target: str, failure: keyring.KeyringError) -> NoReturn:
    """The record says rotated, the file says not: a second record says it did not."""
    try:
        _record(rt, target, audit.Outcome.FAILED)
    except SQLAlchemyError as exc:
        raise CommandError(
            f"keys not rotated: {failure}; the audit log records a rotation to {target} "
            f"that did not happen, and its correction cannot be written ({describe_error(exc)})"
        ) from None
    raise CommandError(f"keys not rotated: {failure} (recorded in the audit log)") from None


def _rewrap_threads() -> None:
    # Loaded anew from the saved file: the keyring every replica will read after restart.
    from messaging import keys as thread_keys  # noqa: PLC0415  (only with --rewrap)

    rt = runtime()
    try:
        require_current_schema(rt)
        done = thread_keys.rewrap_all(rt)
        left = {kid: n for kid, n in thread_keys.kek_usage(rt).items() if kid != done.kek_id}
    finally:
        rt.close()
    print(f"  re-wrapped {done.rewrapped} thread data key(s) under {done.kek_id}")
    if left:
        # A replica still running on the old keyring may have made new threads meanwhile.
        print(
            f"  {sum(left.values())} still under older KEKs: after restarting every replica, "
            "run 'carebridge messaging rewrap'"
        )


def generate(args: argparse.Namespace) -> int:
    refusal = f"{args.out} already exists; refusing to overwrite a keyring"
    if args.out.exists():
        raise CommandError(refusal)
    try:
        keyring.save(
            keyring.Keyring.generate(development=False, alg=args.alg), args.out, overwrite=False
        )
    except keyring.KeyringExistsError:
        # Created while the keys were generated: still never replaced.
        raise CommandError(refusal) from None
    print(f"wrote {args.out} (mode 0600); set CAREBRIDGE_KEYRING_FILE={args.out}")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    ring, path = _keyring_path()
    print(f"{path}{' (development)' if ring.development else ''}")
    for kek in ring.keks:
        active = " active" if kek is ring.active_kek else ""
        print(f"  kek      {kek.kid}  created {kek.created}{active}")
    for key in ring.signing:
        active = " active" if key is ring.active_signing_key else ""
        print(f"  signing  {key.kid}  {key.alg} created {key.created}{active}")
    return 0
