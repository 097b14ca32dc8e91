"""Which apps a patient authorized to read something, and what each calls the patient.

For events (carebridge.events): an app hears of a patient's thread only if its tokens
could read it, i.e. the patient's remembered grant to it holds the scope, the app is
not disabled and the account is active; and it is told the patient's ID as it knows
it, the ``sub`` it was given (pairwise for other sectors, the patient ID for first-party
clients), recorded in ``oidc_subject`` when its first token was issued.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, literal, select
from sqlalchemy.orm import Session

from identity import accounts
from identity.models import Account, PatientLink
from identity.oidc.models import OidcClient, OidcConsent, OidcSubject

# IDs per IN list: a roster import may end many links at once.
_CHUNK = 500


@dataclass(frozen=True)
class AppOfPatient:
    """An app acting for a patient, and the patient's ``sub`` with that app."""

    client_id: str
    subject: str


def apps_of_patient_query(patient: str | ColumnElement[str], scope: str) -> Select[tuple[str, str]]:
    """The same question as a query of (client ID, subject) rows, for a caller folding it
    into a statement of its own (messaging's events: one round trip on a message's post).
    ``patient`` may be a value or a column expression (the patient of a thread)."""
    # The scope matched as a whole word of the space-separated grant, in SQL, so the
    # query is the whole answer; `contains` escapes LIKE's wildcards in the scope.
    grant = literal(" ").concat(OidcConsent.scope).concat(" ")
    return (
        select(OidcConsent.client_id, OidcSubject.subject)
        .join(PatientLink, PatientLink.account_id == OidcConsent.account_id)
        .join(Account, Account.id == OidcConsent.account_id)
        .join(OidcClient, OidcClient.client_id == OidcConsent.client_id)
        .join(
            OidcSubject,
            (OidcSubject.client_id == OidcConsent.client_id)
            & (OidcSubject.account_id == OidcConsent.account_id),
        )
        .where(
            PatientLink.patient_id == patient,
            Account.status == accounts.ACTIVE,
            OidcClient.disabled_at.is_(None),
            grant.contains(f" {scope} ", autoescape=True),
        )
    )


def apps_of_patient(db: Session, patient_id: str, scope: str) -> list[AppOfPatient]:
    query = apps_of_patient_query(patient_id, scope).order_by(OidcConsent.client_id)
    return [
        AppOfPatient(client_id=client_id, subject=subject)
        for client_id, subject in db.execute(query).all()
    ]


def client_exists(db: Session, client_id: str) -> bool:
    """A client that may be given webhook endpoints: registered and not disabled (a
    disabled client's endpoints are disabled with it and must not come back)."""
    row = db.get(OidcClient, client_id)
    return row is not None and row.disabled_at is None


def apps_of_accounts(db: Session, account_ids: Collection[str]) -> dict[str, list[AppOfPatient]]:
    """account ID -> the apps it gave a grant (any scope: each knows the person by its
    ``sub``), the client not disabled; whatever the account's status, since an account
    being disabled or deleted is what they are told of. An app never given a token (no
    ``sub`` recorded) knows nothing of the person and is left out."""
    found: dict[str, list[AppOfPatient]] = {}
    ids = sorted(set(account_ids))
    for start in range(0, len(ids), _CHUNK):
        rows = db.execute(
            select(OidcConsent.account_id, OidcConsent.client_id, OidcSubject.subject)
            .join(OidcClient, OidcClient.client_id == OidcConsent.client_id)
            .join(
                OidcSubject,
                (OidcSubject.client_id == OidcConsent.client_id)
                & (OidcSubject.account_id == OidcConsent.account_id),
            )
            .where(
                OidcConsent.account_id.in_(ids[start : start + _CHUNK]),
                OidcClient.disabled_at.is_(None),
            )
            .order_by(OidcConsent.account_id, OidcConsent.client_id)
        ).all()
        for account_id, client_id, subject in rows:
            found.setdefault(account_id, []).append(AppOfPatient(client_id, subject))
    return found


def subject_of(db: Session, account_id: str, client_id: str) -> str | None:
    """The ``sub`` the client was given for the account, if it was ever given one."""
    return db.scalar(
        select(OidcSubject.subject).where(
            OidcSubject.account_id == account_id, OidcSubject.client_id == client_id
        )
    )
