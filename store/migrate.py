"""Apply the Alembic migrations to a database URL (`portcullis migrate`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from store.db import install_sqlite_pragmas, is_sqlite, sync_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str, revision: str = "head", *, app_role: str | None = None) -> None:
    """Migrate as the URL's role (the tables' owner); then, on PostgreSQL with `app_role`, give the
    application's role what it needs and no more (see `grant_app_role`)."""
    command.upgrade(alembic_config(url), revision)
    if app_role and not is_sqlite(url):
        grant_app_role(url, app_role)


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grant_app_role(url: str, role: str) -> None:
    """Read and write every table, except the audit log: INSERT and SELECT only, so the application
    can neither change nor remove an entry (the table's trigger is the second layer). Idempotent; run
    after every migration, so tables added later are covered too."""
    if not _ROLE_NAME.fullmatch(role):
        raise ValueError(f"not a plain role name: {role!r}")
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            for statement in (
                f'GRANT USAGE ON SCHEMA public TO "{role}"',
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
                f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
                f'REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM "{role}"',
                f'REVOKE ALL ON alembic_version FROM "{role}"',
                f'GRANT SELECT ON alembic_version TO "{role}"',
            ):
                conn.execute(text(statement))
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@functools.cache
def head_revision() -> str:
    """The latest revision of this version's migrations."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class MigrationState:
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.current is None:
            return "not migrated"
        if self.at_head:
            return f"at the latest revision ({self.head})"
        return f"at revision {self.current}, not the latest ({self.head})"


def migration_state(url: str) -> MigrationState:
    return MigrationState(current_revision(url), head_revision())
