"""What identity tells apps (carebridge.events): the one place it emits, per event.

Each event is emitted in the transaction of the change it tells of, to the clients that
could read the patient: the apps the person gave a grant (told the ``sub`` each was
given, pairwise where it gets pairwise subjects: identity.oidc.audiences) and the clients
that follow the patient from outside identity (the care teams' clients, told the patient
ID: :class:`~identity.interfaces.PatientFollowers`, wired by the composition root, since
identity may not ask messaging). IDs only: the payload's ``patient`` is all there is.

- ``grant.revoked``: the person revoked the app; told to that app alone, once (when the
  grant was there to forget), though it can no longer read anything.
- ``account.disabled``, ``account.deleted``: told before the change removes what says
  who could read (a deleted account's grants go with it).
- ``patient.roster_link_ended``: the patient's link to the roster ended (the member
  became ineligible, was left out of a full import, or staff unlinked the account).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import events
from identity import patients
from identity.interfaces import PatientFollowers
from identity.models import PatientLink
from identity.oidc.audiences import apps_of_accounts, subject_of

_CHUNK = 500


def grant_revoked(db: Session, *, account_id: str, client_id: str) -> None:
    subject = subject_of(db, account_id, client_id)
    if subject is not None:
        events.emit(db, events.GRANT_REVOKED, [events.Audience(client_id, subject)], {})


def _of_account(db: Session, followers: PatientFollowers, event_type: str, account_id: str) -> None:
    found = [
        events.Audience(app.client_id, app.subject)
        for app in apps_of_accounts(db, [account_id]).get(account_id, [])
    ]
    patient_id = patients.patient_id_of(db, account_id)
    if patient_id is not None:
        following = followers.clients_following(db, [patient_id]).get(patient_id, [])
        found += [events.Audience(client_id, patient_id) for client_id in following]
    events.emit(db, event_type, found, {})


def account_disabled(db: Session, followers: PatientFollowers, account_id: str) -> None:
    _of_account(db, followers, events.ACCOUNT_DISABLED, account_id)


def account_deleted(db: Session, followers: PatientFollowers, account_id: str) -> None:
    """Before the account's rows are deleted: its grants say which apps to tell."""
    _of_account(db, followers, events.ACCOUNT_DELETED, account_id)


def roster_links_ended(
    db: Session, followers: PatientFollowers, patient_ids: Collection[str]
) -> None:
    """Before a staff unlink deletes the patient's link (the linked account's apps are
    found through it); after an import made members ineligible."""
    ids = sorted(set(patient_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        linked: dict[str, str] = {
            link.patient_id: link.account_id
            for link in db.scalars(select(PatientLink).where(PatientLink.patient_id.in_(chunk)))
        }
        apps = apps_of_accounts(db, linked.values())
        following = followers.clients_following(db, chunk)
        for patient_id in chunk:
            found = [
                events.Audience(app.client_id, app.subject)
                for app in apps.get(linked.get(patient_id, ""), [])
            ]
            found += [events.Audience(c, patient_id) for c in following.get(patient_id, [])]
            events.emit(db, events.PATIENT_ROSTER_LINK_ENDED, found, {})
