"""Seed the demo, idempotently: roster, care team, clinician account, provider app client.

Each start finds what an earlier start made and keeps it (patient IDs, the client, the
team), so a newcomer's bookmarks and threads survive a restart. The provider app's
configuration (its client ID and secret, and the "EHR" list of demo patients it may
write to) goes to ``<data dir>/demo-provider-app.json``, mode 0600, as a real app's
configuration file would.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlalchemy import select

from carebridge import wiring
from carebridge.db import transaction
from carebridge.demo import provider_webhooks
from carebridge.demo.people import PEOPLE, SOURCE, roster_csv
from carebridge.runtime import Runtime
from carebridge.settings import ConfigError
from carebridge.utc import utcnow
from identity import accounts
from identity.credentials import password
from identity.models import RosterMember
from identity.oidc import clients
from identity.oidc.models import OidcClient
from identity.roster import importer
from identity.roster.hashes import RosterHashes
from messaging import care_teams

ACTOR = "demo-seed"
CLIENT_NAME = "carebridge demo provider app"
TEAM_NAME = "Demo Care Team"
CLINICIAN_LOGIN = "clinician@demo.carebridge.test"
# A demo credential printed to the terminal on every start: never use demo mode for real.
CLINICIAN_PASSWORD = "demo clinician walks the journey"  # noqa: S105
PROVIDER_PATH = "/demo/provider"


@dataclass(frozen=True)
class DemoPatient:
    name: str
    patient_id: str
    dob: str
    ssn4: str
    last_name: str


@dataclass(frozen=True)
class DemoConfig:
    issuer: str
    client_id: str
    client_secret: str
    care_team_id: str
    clinician_login: str
    patients: list[DemoPatient]
    # The signing secret of the app's webhook endpoint (provider_webhooks); None: the
    # demo runs without webhooks (a loopback issuer and loopback receivers not allowed).
    webhook_secret: str | None = None

    @property
    def redirect_uri(self) -> str:
        return f"{self.issuer}{PROVIDER_PATH}/callback"

    @property
    def app_url(self) -> str:
        return f"{self.issuer}{PROVIDER_PATH}/"

    @property
    def webhook_url(self) -> str:
        return f"{self.issuer}{PROVIDER_PATH}{provider_webhooks.RECEIVER}"


def config_path(runtime: Runtime) -> Path:
    return runtime.settings.data_dir / "demo-provider-app.json"


def load_config(runtime: Runtime) -> DemoConfig | None:
    try:
        data = json.loads(config_path(runtime).read_text(encoding="utf-8"))
        data["patients"] = [DemoPatient(**patient) for patient in data["patients"]]
        return DemoConfig(**data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_config(runtime: Runtime, config: DemoConfig) -> None:
    path = config_path(runtime)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".demo-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(config), handle, indent=2)
    os.replace(temporary, path)


def _roster(runtime: Runtime) -> list[DemoPatient]:
    with tempfile.TemporaryDirectory() as folder:
        csv_file = Path(folder) / "demo-roster.csv"
        csv_file.write_bytes(roster_csv())
        importer.import_roster(
            runtime,
            csv_file,
            source=SOURCE,
            actor=ACTOR,
            name="demo roster",
            followers=wiring.CareTeamFollowers(),
        )
    hashes = RosterHashes(runtime.keyring)
    keys = {hashes.member_key(SOURCE, person.member_id): person for person in PEOPLE}
    with runtime.sessions() as db:
        query = select(RosterMember.member_key, RosterMember.patient_id).where(
            RosterMember.member_key.in_(keys)
        )
        ids = dict(db.execute(query).tuples().all())
    return [
        DemoPatient(
            name=f"{person.first_name} {person.last_name}",
            patient_id=ids[key],
            dob=person.dob,
            ssn4=person.ssn4,
            last_name=person.last_name,
        )
        for key, person in keys.items()
    ]


def _clinician(runtime: Runtime) -> str:
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, CLINICIAN_LOGIN)
    if found is not None:
        return found.account_id
    hashed = password.hash_password(runtime.settings, CLINICIAN_PASSWORD)
    with transaction(runtime.sessions) as db:
        # A demo address nobody reads: created verified, so the demo signs in at once.
        return accounts.create(
            db, runtime.keyring, login=CLINICIAN_LOGIN, password_hash=hashed, verified_at=utcnow()
        )


def _client(runtime: Runtime, previous: DemoConfig | None) -> tuple[str, str]:
    """The demo client's ID and secret; a new secret only when the old one is unknown."""
    issuer = runtime.settings.issuer
    redirect = f"{issuer}{PROVIDER_PATH}/callback"
    after_logout = f"{issuer}{PROVIDER_PATH}/"
    with transaction(runtime.sessions) as db:
        rows = db.scalars(
            select(OidcClient).where(
                OidcClient.name == CLIENT_NAME, OidcClient.disabled_at.is_(None)
            )
        ).all()
        if not rows:
            created = clients.create(
                db,
                runtime.settings,
                name=CLIENT_NAME,
                client_type=clients.CONFIDENTIAL,
                redirect_uris=[redirect],
                post_logout_redirect_uris=[after_logout],
                scopes=["openid", "messaging.read", "messaging.write"],
            )
            assert created.secret is not None  # noqa: S101  (confidential: always one)
            return created.client_id, created.secret
        row = rows[0]
        # The issuer (its port) may differ from the last start: follow it.
        row.redirect_uris, row.post_logout_redirect_uris = redirect, after_logout
        if previous is not None and previous.client_id == row.client_id:
            return row.client_id, previous.client_secret
        return row.client_id, clients.rotate_secret(db, row.client_id)


def _care_team(runtime: Runtime, client_id: str, clinician: str) -> str:
    teams = [team for team in care_teams.list_teams(runtime) if team.name == TEAM_NAME]
    team_id = (
        teams[0].id
        if teams
        else care_teams.create(runtime, name=TEAM_NAME, retention_days=None, actor=ACTOR)
    )
    care_teams.add_client(runtime, team_id, client_id, actor=ACTOR)
    # Team admin: the demo's one staff member sees every pool and can invite colleagues.
    care_teams.add_staff(runtime, team_id, clinician, actor=ACTOR, role="team admin")
    return team_id


def seed(runtime: Runtime) -> DemoConfig:
    if runtime.settings.is_production:
        raise ConfigError("demo mode is refused in production (CAREBRIDGE_ENV=production)")
    previous = load_config(runtime)
    patients = _roster(runtime)
    clinician = _clinician(runtime)
    client_id, secret = _client(runtime, previous)
    team_id = _care_team(runtime, client_id, clinician)
    config = DemoConfig(
        issuer=runtime.settings.issuer,
        client_id=client_id,
        client_secret=secret,
        care_team_id=team_id,
        clinician_login=CLINICIAN_LOGIN,
        patients=patients,
    )
    same_client = previous is not None and previous.client_id == client_id
    known = previous.webhook_secret if previous is not None and same_client else None
    hook_secret = provider_webhooks.register(runtime, client_id, config.webhook_url, known)
    config = replace(config, webhook_secret=hook_secret)
    _save_config(runtime, config)
    return config


def instructions(config: DemoConfig) -> str:
    """What the terminal shows: everything a newcomer needs for the walk-through."""
    lines = [
        "",
        "carebridge demo mode — synthetic data only, never real patients",
        "",
        f"  1. Patient: open {config.issuer}/signup, create an account, enrol an",
        "     authenticator app, then verify with one of these made-up people:",
    ]
    for patient in config.patients:
        lines.append(f"       {patient.name:<22} DOB {patient.dob}  SSN last 4 {patient.ssn4}")
    lines += [
        "     (Dana and Eli share a DOB and last 4: you will be asked for the last name.)",
        f"  2. Clinician: open the demo provider app {config.app_url}",
        f"     and sign in as {config.clinician_login} / {CLINICIAN_PASSWORD}",
        "     (first time: enrol an authenticator app), then message a patient.",
        "  3. As the patient, add a mobile number under Notifications (its code prints",
        "     below) and turn texts on. The worker runs in this process: the SMS for a",
        "     new message (a generic text and a secure link, nothing else) prints below.",
        *(
            [
                "  4. The provider app hears of new threads by webhook: its page lists the",
                "     events the worker delivered (verified with the standardwebhooks library).",
            ]
            if config.webhook_secret
            else []
        ),
        "",
    ]
    return "\n".join(lines)
