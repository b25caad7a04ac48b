"""Shared fixtures: the suite runs once on SQLite and once on PostgreSQL.

Without a PostgreSQL or Redis, the tests that need one are skipped with the reason; with
PORTCULLIS_TEST_REQUIRE_SERVICES=1 (CI) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from authz import install_team_permissions, team_permissions
from gateway.app import create_app
from gateway.settings import Settings
from identity.passwords import HashParameters, PasswordHasherService
from identity.tokens import generate_private_key_pem
from resolvers.provisioning import create_tenant
from store.db import Database
from store.migrate import upgrade
from tests.services import ServiceUnavailable, postgres_server, redis_server

pytest_plugins = ["tests.timing"]

REQUIRE = os.environ.get("PORTCULLIS_TEST_REQUIRE_SERVICES") == "1"
CLIENT_IP = "203.0.113.7"
PASSWORD = "correct horse battery staple"
FAST_HASH = HashParameters(memory_kib=1024, time_cost=1, parallelism=1)


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


class _Kept(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "audit_entry_missing":
            self.records.append(record)


@pytest.fixture(autouse=True)
def missing_audit_entries() -> Iterator[list[logging.LogRecord]]:
    """Each mutation's service records its own audit entry: a test fails when the schema had to write its
    safety-net entry for one (`audit_entry_missing`, schema/audit.py). A test of the safety net itself
    takes the records it expects out of the list."""
    records: list[logging.LogRecord] = []
    handler = _Kept(records)
    logger = logging.getLogger("portcullis.audit")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
    missing = sorted({str(getattr(r, "field", "?")) for r in records})
    assert not missing, f"mutations whose service recorded no audit entry: {', '.join(missing)}"


@pytest.fixture(autouse=True)
def restored_team_permissions() -> Iterator[None]:
    """The team permissions are process-wide (authz.vocabulary): whatever a test installs is gone after it,
    and the set installed before it (empty, unless a wider fixture installed one) is back."""
    before = tuple(team_permissions().values())
    try:
        yield
    finally:
        install_team_permissions(before)


@pytest.fixture(scope="session")
def signing_key() -> str:
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    given = os.environ.get("PORTCULLIS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    try:
        with postgres_server() as url:
            yield url
    except ServiceUnavailable as exc:
        unavailable(str(exc))


def worker_number() -> int:
    """This process's number among the pytest-xdist workers of the run (`gw3` is 3); 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def worker_redis_url(given: str) -> str:
    """`given` for this worker: its database index plus the worker's number, so that workers sharing one Redis
    server never see each other's keys (rate windows, sessions, locks)."""
    parts = urlsplit(given)
    if parts.scheme not in ("redis", "rediss"):
        return given
    index = int(parts.path.strip("/") or 0) + worker_number()
    return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("PORTCULLIS_TEST_REDIS_URL")
    if given:
        yield worker_redis_url(given)
        return
    try:
        with redis_server() as url:
            yield url
    except ServiceUnavailable as exc:
        unavailable(str(exc))


def _fresh_postgres_database(admin_url: str) -> str:
    name = f"portcullis_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'portcullis.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url(postgres_admin_url: str) -> str:
    url = _fresh_postgres_database(postgres_admin_url)
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    yield url
    _truncate(url)


def _truncate(url: str) -> None:
    from store.db import install_sqlite_pragmas, is_sqlite, sync_url

    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with engine.begin() as conn:
        if is_sqlite(url):
            # the audit table refuses DELETE by trigger: as the database's owner, lift it and put it back
            triggers = conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
            ).all()
            for name, _ in triggers:
                conn.execute(text(f'DROP TRIGGER "{name}"'))
            for name in tables:
                conn.execute(text(f'DELETE FROM "{name}"'))
            for _, ddl in triggers:
                conn.execute(text(ddl))
        else:
            # as a superuser, skipping the audit table's TRUNCATE trigger for this transaction
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    engine.dispose()


def sql(url: str, statement: str, **params: Any) -> list[Any]:
    """Run one statement on the test database outside the application (to look at or alter rows). A
    datetime parameter is bound as the time columns store it (aware; the UTC text on SQLite)."""
    from datetime import datetime

    from sqlalchemy import bindparam

    from store.db import install_sqlite_pragmas, is_sqlite, sync_url
    from store.types import UtcDateTime

    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    times = [bindparam(name, type_=UtcDateTime()) for name, value in params.items() if isinstance(value, datetime)]
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement).bindparams(*times), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


async def refused_within(request: Any, within: float = 1.0) -> float:
    """Poll `request()` (an awaitable HTTP call) until it answers 401; the seconds that took."""
    import asyncio
    import time

    started = time.monotonic()
    while True:
        r = await request()
        elapsed = time.monotonic() - started
        if r.status_code == 401:
            return elapsed
        assert r.status_code == 200, r.text
        assert elapsed < within, f"still accepted {elapsed:.2f}s later"
        await asyncio.sleep(0.02)


def make_settings(database_url: str, signing_key: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "signing_key": signing_key,
        "password_hash_memory_kib": FAST_HASH.memory_kib,
        "password_hash_time_cost": FAST_HASH.time_cost,
        "password_hash_parallelism": FAST_HASH.parallelism,
        "log_level": "DEBUG",
        # the suite logs in and calls anonymously far more often than a person, from one address and
        # (in shared mode) on one Redis: the tests of these limits set them low themselves
        "anonymous_requests_per_minute": 100_000,
        "login_attempts_per_account_per_minute": 100_000,
        "login_attempts_per_address_per_minute": 100_000,
        "sso_start_per_minute": 100_000,
        "oidc_callback_per_minute": 100_000,
        "saml_metadata_per_minute": 100_000,
        "saml_acs_per_minute": 100_000,
        "report_downloads_per_minute": 100_000,
        # nor are its addresses blocked for abuse (tests/gateway/test_automatic_blocks.py sets its thresholds)
        "block_sign_in_accounts": 0,
        "block_invalid_credentials": 0,
        "block_rate_limited": 0,
        # the report schedules' runner looks at start-up, then hourly: the tests run their passes themselves
        "report_schedule_poll_seconds": 3600,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str, signing_key: str) -> Settings:
    return make_settings(database_url, signing_key)


@contextlib.asynccontextmanager
async def running(app: Any, client_ip: str = CLIENT_IP) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with running(application) as client:
        application.state.client = client
        yield application


@pytest.fixture
def client(app: Any) -> httpx.AsyncClient:
    return app.state.client  # type: ignore[no-any-return]


@dataclass
class Tenant:
    org_id: str
    slug: str
    user_id: str
    email: str
    password: str


async def make_tenant(
    database_url: str,
    *,
    slug: str = "acme",
    email: str = "owner@acme.test",
    password: str = PASSWORD,
    plan: str = "professional",
    role: str | None = None,
    parent_id: str | None = None,
    limits: dict[str, int | None] | None = None,
) -> Tenant:
    """A tenant and its owner; `limits` overrides the plan's limits (QuotaResource name -> int, None for
    unlimited), as `portcullis org limits --set` does."""
    hasher = PasswordHasherService(FAST_HASH)
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            result = await create_tenant(
                session,
                slug=slug,
                name=slug.title(),
                plan=plan,
                owner_email=email,
                password_hash=hasher.hash_sync(password),
            )
            if parent_id is not None:
                result.organization.parent_id = parent_id
                session.add(result.organization)
            if limits is not None:
                result.organization.limit_overrides = dict(limits)
                session.add(result.organization)
            if role is not None:
                from sqlalchemy import update

                from store.models import Membership

                await session.execute(
                    update(Membership)
                    .where(Membership.user_id == result.owner.id)  # type: ignore[arg-type]
                    .values(role=role)
                )
        return Tenant(result.organization.id, slug, result.owner.id, email, password)
    finally:
        await db.dispose()


def claim_domain(url: str, organization_id: str, domain: str) -> None:
    """The organization claims `domain` (as `claimDomain` does), so its identity providers may provision there."""
    from datetime import UTC, datetime

    sql(
        url,
        "INSERT INTO email_domains (domain, organization_id, claimed_at) VALUES (:d, :o, :t)",
        d=domain,
        o=organization_id,
        t=datetime.now(UTC),
    )


@pytest.fixture
async def tenant(database_url: str) -> Tenant:
    return await make_tenant(database_url)


@pytest.fixture
async def shared_tenant(postgresql_url: str, redis_url: str) -> AsyncIterator[Tenant]:
    """A tenant on the shared PostgreSQL, for tests that run several apps on it with Redis."""
    slug = f"shared-{uuid.uuid4().hex[:8]}"
    try:
        yield await make_tenant(postgresql_url, slug=slug, email=f"owner@{slug}.test")
    finally:
        _truncate(postgresql_url)


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=h)


LOGIN = """
mutation Login($email: String!, $password: String!, $org: String) {
  login(email: $email, password: $password, organization: $org) {
    accessToken refreshToken expiresAt user { id email } organization { id slug }
  }
}
"""


async def login(client: httpx.AsyncClient, t: Tenant, password: str | None = None) -> dict[str, Any]:
    r = await gql(client, LOGIN, {"email": t.email, "password": password or t.password})
    body = r.json()
    assert body.get("data"), body
    assert body["data"]["login"], body
    return body["data"]["login"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def shared_apps(
    database_url: str, redis_url: str, signing_key: str, tenant: Tenant
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, str, Any, Any]]:
    """Two gateway apps in shared mode on one database and one Redis, as two processes would be: their
    clients, an access token of `tenant` from the first, and the apps themselves (c1, c2, token, one, two)."""
    one = create_app(make_settings(database_url, signing_key, redis_url=redis_url))
    two = create_app(make_settings(database_url, signing_key, redis_url=redis_url))
    async with running(one) as c1, running(two) as c2:
        yield c1, c2, (await login(c1, tenant))["accessToken"], one, two


def error_codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


class cost_of(dict):
    """`extensions.cost` of a response that requested `n`: compares `requested` exactly and only checks
    that the budget fields (`remaining`, `resetAt`) are there, since they move with every request."""

    def __init__(self, requested: int) -> None:
        super().__init__(requested=requested)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, dict)
            and other.get("requested") == self["requested"]
            and "remaining" in other
            and "resetAt" in other
            and len(other) == 3
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]
