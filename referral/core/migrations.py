"""alembic, driven from the code: configuration, upgrade and downgrade, and the schema-at-head check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
UPGRADE_HINT = "run `referral db upgrade` (or `make run`, which does it)"


class SchemaOutOfDate(RuntimeError):
    """The database schema is not the one this code was written for."""


def alembic_config(database_url: str) -> Config:
    """An alembic configuration for the given database that uses the repository's ``migrations/``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    if head is None:
        raise SchemaOutOfDate("no migration revisions found")
    return head


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (blocking; runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    """Revert migrations down to ``revision`` (blocking; runs its own event loop)."""
    command.downgrade(alembic_config(database_url), revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def ensure_schema_at_head(engine: AsyncEngine) -> None:
    """Raise ``SchemaOutOfDate`` with the fixing command unless the database is at the code's head."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or 'none (empty database)'}, "
            f"the code needs {head}: {UPGRADE_HINT}"
        )
