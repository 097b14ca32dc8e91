"""``carebridge keys``: key generation, rotation and listing (never printing secrets).

A rotation changes the keyring in use, so it is audited (``keys.rotate``, the new key
IDs only). The keyring is a file and the audit log is in the database, which may be
elsewhere: the record is written first, the file replaced, and the record committed
only then. No database, no rotation: a key change nobody can account for afterwards is
worse than one made an hour later (the service cannot run without its database either).
``generate`` is not audited: it only ever creates a new file, never replacing a keyring,
and runs before a database may exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from carebridge import audit, keyring
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.db import describe_error, transaction
from carebridge.runtime import load_keyring
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


def rotate(args: argparse.Namespace) -> int:
    current, path = _keyring_path()
    rotated = current.rotated(args.alg)
    _save_audited(current, rotated, path)
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


def _save_audited(current: keyring.Keyring, rotated: keyring.Keyring, path: Path) -> None:
    """Replace the keyring file, committing its audit record with it, or change nothing."""
    rt = runtime()
    saved = False
    try:
        require_current_schema(rt)
        with transaction(rt.sessions) as db:
            # Written at once (not at commit): the database takes it before the file changes.
            audit.append(
                db,
                actor=OPERATOR,
                action="keys.rotate",
                outcome=audit.Outcome.ALLOWED,
                target=f"kek:{rotated.active_kek.kid} signing:{rotated.active_signing_key.kid}",
            )
            keyring.save(rotated, path)
            saved = True
    except SQLAlchemyError as exc:
        if saved:
            # The record did not commit: put the old keyring back, unrecorded changes none.
            keyring.save(current, path)
        raise CommandError(
            f"keys not rotated: the audit log cannot be written ({describe_error(exc)})"
        ) from None
    finally:
        rt.close()


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
