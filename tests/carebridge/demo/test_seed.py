"""Demo mode's seeding: idempotent, complete, and refused in production."""

from __future__ import annotations

import stat

import pytest
from sqlalchemy import func, select

from carebridge import audit
from carebridge.demo import seed
from carebridge.demo.people import PEOPLE
from carebridge.runtime import Runtime
from carebridge.settings import ConfigError, Settings
from identity import accounts
from identity.models import RosterMember
from identity.oidc import clients
from identity.oidc.models import OidcClient
from messaging import care_teams


def test_seeding_twice_keeps_everything_the_first_made(runtime: Runtime) -> None:
    first = seed.seed(runtime)
    second = seed.seed(runtime)
    assert second == first
    assert len(first.patients) == len(PEOPLE)
    assert len({patient.patient_id for patient in first.patients}) == len(PEOPLE)
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(RosterMember)) == len(PEOPLE)
        named = select(func.count()).where(OidcClient.name == seed.CLIENT_NAME)
        assert db.scalar(named) == 1
        client = clients.find(db, first.client_id)
        assert client is not None and client.check_client_secret(first.client_secret)
        assert client.check_redirect_uri(first.redirect_uri)
        assert accounts.find_by_login(db, runtime.keyring, seed.CLINICIAN_LOGIN) is not None
        assert audit.verify(db).intact
    teams = [team for team in care_teams.list_teams(runtime) if team.name == seed.TEAM_NAME]
    assert [team.id for team in teams] == [first.care_team_id]
    assert teams[0].clients == [first.client_id] and teams[0].staff == 1


def test_the_provider_app_configuration_is_private(runtime: Runtime) -> None:
    seed.seed(runtime)
    mode = stat.S_IMODE(seed.config_path(runtime).stat().st_mode)
    assert mode == 0o600


def test_a_lost_configuration_gets_a_new_secret_for_the_same_client(runtime: Runtime) -> None:
    first = seed.seed(runtime)
    seed.config_path(runtime).unlink()
    second = seed.seed(runtime)
    assert second.client_id == first.client_id
    assert second.client_secret != first.client_secret
    with runtime.sessions() as db:
        client = clients.find(db, second.client_id)
        assert client is not None
        assert client.check_client_secret(second.client_secret)
        assert not client.check_client_secret(first.client_secret)


def test_instructions_name_the_pairs_and_the_app(runtime: Runtime) -> None:
    config = seed.seed(runtime)
    text = seed.instructions(config)
    for person in PEOPLE:
        assert person.dob in text and person.ssn4 in text
    assert config.app_url in text and seed.CLINICIAN_LOGIN in text
    assert config.client_secret not in text


def test_demo_mode_is_refused_in_production(tmp_path: object) -> None:
    settings = Settings(env="production", demo=True, data_dir=tmp_path)  # type: ignore[arg-type]
    assert any("CAREBRIDGE_DEMO" in problem for problem in settings.production_problems())
    runtime = Runtime.build(settings)
    try:
        with pytest.raises(ConfigError, match="refused in production"):
            seed.seed(runtime)
    finally:
        runtime.close()
