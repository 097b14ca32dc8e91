"""A small roster and linked accounts for the activation and staff-operation tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamFollowers
from identity.models import PatientLink, RosterMember
from identity.roster import importer
from identity.roster.hashes import RosterHashes

from . import factories

HEADER = "first_name,last_name,dob,ssn4,zip,group,member_id,status"
# Clearly fake people with values distinctive enough to search for.
ZEB = ["Zebediah", "Quillfeather", "1961-03-14", "4821", "02139", "Acme Widgets", "QX-700001"]
OTTO = ["Ottoline", "Brambleworth", "1975-07-04", "0193", "94110", "Acme", "QX-700002"]
PIP = ["Pipkin", "Thistledown", "1990-12-01", "7350", "60614", "", "QX-700003"]
PEOPLE = {"zeb": ZEB, "otto": OTTO, "pip": PIP}


def import_roster(runtime: Runtime, tmp_path: Path) -> dict[str, str]:
    """Imports PEOPLE for source "acme"; returns name -> patient ID."""
    path = tmp_path / "roster.csv"
    lines = [HEADER, *(",".join([*row, ""]) for row in PEOPLE.values())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    importer.import_roster(runtime, path, source="acme", followers=CareTeamFollowers())
    hashes = RosterHashes(runtime.keyring)
    with runtime.sessions() as db:
        keys = {
            member.member_key: member.patient_id
            for member in db.scalars(select(RosterMember)).all()
        }
    return {name: keys[hashes.member_key("acme", row[6])] for name, row in PEOPLE.items()}


def signed_in_account(runtime: Runtime) -> tuple[str, dict[str, str]]:
    """An account past its second step: its ID and bearer headers."""
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2)
    return account_id, {"Authorization": f"Bearer {token}"}


def link(runtime: Runtime, account_id: str, patient_id: str) -> None:
    with transaction(runtime.sessions) as db:
        db.add(
            PatientLink(account_id=account_id, patient_id=patient_id, linked_at=datetime.now(UTC))
        )


def links(runtime: Runtime) -> dict[str, str]:
    with runtime.sessions() as db:
        return {row.patient_id: row.account_id for row in db.scalars(select(PatientLink)).all()}


def audit_records(runtime: Runtime) -> list[AuditRecord]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all())
