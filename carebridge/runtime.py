"""The process's long-lived collaborators, built once from settings.

The CLI and the web app share this, so ``serve`` and ``carebridge keys rotate`` agree on
where the keyring and the database are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from carebridge import keyring as keyring_module
from carebridge.db import Budget, LoopConnections, make_engine, make_sessionmaker
from carebridge.keyring import Keyring, KeyringError
from carebridge.migrate import current_revision, head_revision, known_revisions, schema_state
from carebridge.settings import Role, Settings


def load_keyring(settings: Settings) -> Keyring:
    if settings.is_production:
        if settings.keyring_file is None:
            raise KeyringError("CAREBRIDGE_KEYRING_FILE is required in production")
        keyring = keyring_module.load(settings.keyring_file)
        if keyring.development:
            raise KeyringError(
                f"keyring file {settings.keyring_file} holds generated development keys; "
                "make a production keyring with 'carebridge keys generate'"
            )
        return keyring
    if settings.keyring_file is not None:
        return keyring_module.load(settings.keyring_file)
    return keyring_module.load_or_create_development(settings.effective_keyring_file)


def database_budget(settings: Settings, role: Role) -> Budget:
    return Budget(role.value, settings.db_timeout_seconds(role))


# PostgreSQL connections a process keeps for work on its event loop (token grants),
# besides the engine's pool for worker threads.
LOOP_CONNECTIONS = 4


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    _keyring: Keyring | None = field(default=None, repr=False)
    # What this process does: how long it lets the database take (its budget).
    role: Role = Role.WEB

    @classmethod
    def build(cls, settings: Settings, role: Role = Role.WEB) -> Runtime:
        """The web app's (the default: the shortest budget, for anything that forgets to
        say), the worker's or a CLI command's runtime."""
        if settings.uses_sqlite:
            # It holds the SQLite database: owner-only.
            settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        budget = database_budget(settings, role)
        return cls(settings, make_engine(settings.effective_database_url, budget), role=role)

    @property
    def budget(self) -> Budget:
        return database_budget(self.settings, self.role)

    @property
    def keyring(self) -> Keyring:
        """Loaded on first use, so schema and audit commands work without key material;
        ``serve`` and ``worker`` touch it at start to fail before serving."""
        if self._keyring is None:
            self._keyring = load_keyring(self.settings)
        return self._keyring

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    @cached_property
    def loop_connections(self) -> LoopConnections | None:
        """Connections for statements awaited on the event loop (PostgreSQL only; None on
        SQLite, whose work stays in worker threads)."""
        if self.settings.uses_sqlite:
            return None
        return LoopConnections(self.engine.url, LOOP_CONNECTIONS, self.budget)

    @cached_property
    def expected_revision(self) -> str | None:
        return head_revision()

    @cached_property
    def _known_revisions(self) -> frozenset[str]:
        return known_revisions()

    def schema_state(self) -> str:
        """Whether the database's schema is this release's: current, behind or ahead."""
        current = current_revision(self.engine)
        return schema_state(current, self.expected_revision, self._known_revisions)

    async def close_loop_connections(self) -> None:
        """Close the event loop's connections, if any were made (the app's shutdown)."""
        connections = self.__dict__.get("loop_connections")
        if connections is not None:
            await connections.close()

    def close(self) -> None:
        self.engine.dispose()
