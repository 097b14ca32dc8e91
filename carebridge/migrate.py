"""Alembic, driven from code: ``carebridge db upgrade``, ``serve`` and ``/readyz`` use it."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from carebridge.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine, settings: Settings | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py runs on this engine instead of building its own from a URL.
    config.attributes["engine"] = engine
    # The deployment's settings, for a data migration that needs one (0012: the default
    # time zone); None: each setting's default.
    config.attributes["settings"] = settings
    return config


def head_revision() -> str | None:
    script = ScriptDirectory(str(MIGRATIONS))
    return script.get_current_head()


def known_revisions() -> frozenset[str]:
    script = ScriptDirectory(str(MIGRATIONS))
    return frozenset(rev.revision for rev in script.walk_revisions())


def schema_state(current: str | None, head: str | None, known: frozenset[str]) -> str:
    """ "current", "behind" (migrate before serving) or "ahead".

    A revision this release does not know was written by a newer release: during a
    rolling deploy the migration runs first, and the old replicas keep serving (the
    project's migrations stay backward compatible for one release).
    """
    if current == head:
        return "current"
    if current is None or current in known:
        return "behind"
    return "ahead"


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head", *, settings: Settings | None = None) -> None:
    command.upgrade(alembic_config(engine, settings), revision)
