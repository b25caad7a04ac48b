"""Migrations produce exactly the models' schema on both backends, `portcullis migrate` is
idempotent, and a request's unit of work is all or nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select
from sqlmodel import SQLModel

import store.models  # noqa: F401  (the tables)
from gateway import cli
from identity.tokens import AccessTokens
from store.db import install_sqlite_pragmas, is_sqlite, sync_url
from store.migrate import alembic_config, current_revision, upgrade
from store.models import AuthSession, RefreshToken, RefreshTokenFamily
from tests.conftest import LOGIN, Tenant, _fresh_postgres_database, error_codes, gql


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    admin: str = request.getfixturevalue("postgres_admin_url")
    return _fresh_postgres_database(admin)


def engine_for(url: str) -> Any:
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    return engine


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()


def test_migrations_produce_the_models_schema(empty_url: str) -> None:
    upgrade(empty_url)
    engine = engine_for(empty_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, SQLModel.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert differences == [], "models and migrations differ; add a migration"
    assert {t.name for t in SQLModel.metadata.sorted_tables} <= tables
    assert "alembic_version" in tables


def test_every_tenant_table_carries_the_organization(empty_url: str) -> None:
    from store.models import TENANT_TABLES

    for name in TENANT_TABLES:
        assert "organization_id" in SQLModel.metadata.tables[name].columns, name


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_migrate_command_is_idempotent(empty_url: str, clean_env: pytest.MonkeyPatch, capsys) -> None:
    clean_env.setenv("PORTCULLIS_DATABASE_URL", empty_url)
    clean_env.setenv("PORTCULLIS_ENV", "test")
    assert current_revision(empty_url) is None
    assert cli.main(["migrate"]) == 0
    assert current_revision(empty_url) == head()
    assert cli.main(["migrate"]) == 0
    assert current_revision(empty_url) == head()
    assert capsys.readouterr().out.count("database migrated") == 2


def test_migrate_refuses_an_unknown_backend(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PORTCULLIS_DATABASE_URL", "mysql://u@localhost/x")
    with pytest.raises(Exception) as exc:
        cli.main(["migrate"])
    assert "unsupported database backend" in str(exc.value)


# -- the unit of work ---------------------------------------------------------------------------------


def count(url: str, model: Any) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model)).scalar_one())
    finally:
        engine.dispose()


async def test_failed_mutation_writes_nothing(
    client, tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login adds its session and refresh token, then fails: none of it is committed."""
    calls: list[str] = []

    def explode(self: Any, **claims: Any) -> Any:
        calls.append(claims["session_id"])
        raise RuntimeError("signing failed")

    monkeypatch.setattr(AccessTokens, "issue", explode)
    r = await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})
    assert error_codes(r.json()) == ["INTERNAL"]
    assert "signing failed" not in r.text
    assert calls, "the failure came after the session was created"
    for model in (AuthSession, RefreshTokenFamily, RefreshToken):
        assert count(database_url, model) == 0, model.__tablename__

    monkeypatch.undo()
    r = await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})
    assert r.json()["data"]["login"]["accessToken"]
    assert count(database_url, AuthSession) == 1


@pytest.mark.parametrize("when", ["entering", "leaving"])
async def test_failure_around_the_operation_rolls_back(
    tenant: Tenant, database_url: str, signing_key: str, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """An extension fails, on its way into or out of the operation, after the request's session was
    opened and written to: the write is rolled back, the session closed, and the caller gets a masked
    INTERNAL error."""
    from gateway.app import create_app
    from schema.extensions import IntrospectionGuard
    from store.models import Organization
    from tests.conftest import make_settings, running

    contexts: list[Any] = []

    async def failing(self: Any) -> Any:
        if when == "leaving":
            yield
        ctx = self.execution_context.context
        contexts.append(ctx)
        db = await ctx.db()
        db.add(Organization(slug="never-committed", name="Never"))
        await db.flush()
        raise RuntimeError("extension failed")
        yield  # an async generator, as strawberry's hooks are

    monkeypatch.setattr(IntrospectionGuard, "on_operation", failing)
    # prod, where the introspection guard runs on every anonymous operation
    settings = make_settings(
        database_url,
        signing_key,
        env="prod",
        api_key_pepper="p" * 40,
        cookie_secret="c" * 40,
        data_encryption_key="d" * 40,
    )
    async with running(create_app(settings)) as client:
        r = await gql(client, "{ __typename }")
    body = r.json()
    assert contexts, "the failing extension ran"
    assert error_codes(body) == ["INTERNAL"]
    assert body["errors"][0]["extensions"]["requestId"] == r.headers["x-request-id"]
    assert "extension failed" not in r.text
    assert r.status_code == 500
    assert not contexts[0].db_opened
    assert count(database_url, Organization) == 1  # the tenant's, not ours
