"""Recovery codes: ten single-use codes for when the authenticator app is gone.

- A code is 10 characters from Crockford's base32 alphabet (no I, L, O or U): 50 random
  bits, shown as XXXXX-XXXXX. Typing is forgiving: case, spaces and dashes don't matter,
  and O, I, L read as 0, 1, 1.
- Stored as a keyed hash (keyring pepper): the codes are random and long, so a fast hash
  is enough, and a stolen table is useless without the keyring.
- Using a code is one conditional UPDATE (``used_at IS NULL``): two concurrent uses of the
  same code cannot both pass.
- Shown once: a page generating codes keeps them encrypted to the session that asked
  (``reveal_encrypted``) until that session's next page shows them and wipes them.
  Regenerating replaces every code, used or not.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from carebridge.keyring import DecryptionError, associated_data
from carebridge.runtime import Runtime
from identity.models import RecoveryCode, new_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
COUNT = 10
LENGTH = 10
_READS_AS = str.maketrans("OIL", "011")


def normalise(typed: str) -> str:
    """Uppercase, spaces and dashes removed, look-alike letters read as digits."""
    return "".join(typed.split()).replace("-", "").upper().translate(_READS_AS)


def grouped(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


def _hash(runtime: Runtime, code: str) -> str:
    return runtime.keyring.lookup_hash("recovery-code", code)


def _reveal_aad(account_id: str, session_handle: str) -> bytes:
    return associated_data("recovery-code-reveal", account_id, session_handle)


def regenerate(
    db: Session, runtime: Runtime, account_id: str, *, reveal_to: str | None = None
) -> list[str]:
    """Replace the account's codes with ten new ones, returned grouped for display.

    With ``reveal_to`` (a session handle) they are also kept, encrypted to that session,
    for :func:`reveal` to show once on the next page.
    """
    db.execute(delete(RecoveryCode).where(RecoveryCode.account_id == account_id))
    codes = ["".join(secrets.choice(ALPHABET) for _ in range(LENGTH)) for _ in range(COUNT)]
    for code in codes:
        reveal = None
        if reveal_to is not None:
            reveal = runtime.keyring.encrypt(code.encode(), _reveal_aad(account_id, reveal_to))
        db.add(
            RecoveryCode(
                id=new_id("rc"),
                account_id=account_id,
                code_hash=_hash(runtime, code),
                reveal_encrypted=reveal,
            )
        )
    db.flush()
    return [grouped(code) for code in codes]


def reveal(db: Session, runtime: Runtime, account_id: str, session_handle: str) -> list[str]:
    """The codes just generated for this session, once; afterwards (or elsewhere) none."""
    rows = db.scalars(
        select(RecoveryCode)
        .where(RecoveryCode.account_id == account_id, RecoveryCode.reveal_encrypted.is_not(None))
        .with_for_update()
    ).all()
    codes = []
    aad = _reveal_aad(account_id, session_handle)
    for row in rows:
        assert row.reveal_encrypted is not None  # noqa: S101  (the query says so)
        try:
            codes.append(grouped(runtime.keyring.decrypt(row.reveal_encrypted, aad).decode()))
        except DecryptionError:
            continue  # kept for another session: not this one's to see
        row.reveal_encrypted = None
    db.flush()
    return sorted(codes)


def forget_reveal(db: Session, account_id: str) -> None:
    """Wipe any codes still waiting to be shown (their owner says they are saved)."""
    db.execute(
        update(RecoveryCode)
        .where(RecoveryCode.account_id == account_id)
        .values(reveal_encrypted=None)
        .execution_options(synchronize_session=False)
    )


def use(db: Session, runtime: Runtime, account_id: str, typed: str) -> bool:
    """Spend one of the account's unused codes; False if it is not one."""
    code = normalise(typed)
    if len(code) != LENGTH or any(ch not in ALPHABET for ch in code):
        return False
    result = db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.account_id == account_id,
            RecoveryCode.code_hash == _hash(runtime, code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=datetime.now(UTC), reveal_encrypted=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def remaining(db: Session, account_id: str) -> int:
    count = db.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.account_id == account_id, RecoveryCode.used_at.is_(None))
    )
    return int(count or 0)


def remove_all(db: Session, account_id: str) -> None:
    db.execute(delete(RecoveryCode).where(RecoveryCode.account_id == account_id))
