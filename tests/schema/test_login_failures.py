"""How password login fails, over HTTP: generic answers, lockout, races, odd inputs, quiet logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from gateway.app import create_app
from gateway.logs import JsonFormatter
from identity.passwords import PasswordHasherService
from store.db import Database
from store.models import Membership, User
from tests.conftest import (
    FAST_HASH,
    LOGIN,
    Tenant,
    cost_of,
    error_codes,
    gql,
    login,
    make_settings,
    make_tenant,
    running,
)

ATTACKER_IP = "198.51.100.66"
HOME_IP = "192.0.2.10"
UNLOCK = "mutation($id: ID!) { unlockUser(userId: $id) }"
REFRESH = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
CHANGE = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Counts:
    """Password verifications asked for (`verify`) and argon2 runs of any kind (`argon2`)."""

    verify: int = 0
    argon2: int = 0


def count_verifications(app: Any) -> Counts:
    hasher: PasswordHasherService = app.state.services.hasher
    counts = Counts()
    real_verify, real_quietly = hasher.verify, hasher._verify_quietly

    async def verify(stored_hash: str | None, password: str) -> bool:
        counts.verify += 1
        return await real_verify(stored_hash, password)

    def quietly(stored_hash: str, password: str) -> bool:
        counts.argon2 += 1
        return real_quietly(stored_hash, password)

    hasher.verify = verify  # type: ignore[method-assign]
    hasher._verify_quietly = quietly  # type: ignore[method-assign]
    return counts


def freeze_clock(app: Any) -> Clock:
    clock = Clock(time.time())
    app.state.services.throttle.clock = clock
    return clock


@contextlib.asynccontextmanager
async def client_from(app: Any, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another client of the already running app, connecting from `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40001))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def attempt(client: httpx.AsyncClient, email: str, password: str, org: str | None = None) -> httpx.Response:
    return await gql(client, LOGIN, {"email": email, "password": password, "org": org})


def refused(r: httpx.Response) -> bool:
    body = r.json()
    return error_codes(body) == ["UNAUTHENTICATED"] and not body.get("data")


async def lock_out(client: httpx.AsyncClient, email: str, threshold: int = 5) -> None:
    for i in range(threshold):
        assert refused(await attempt(client, email, f"wrong guess number {i}"))


async def update_user(database_url: str, user_id: str, **values: Any) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await s.execute(update(User).where(User.id == user_id).values(**values))  # type: ignore[arg-type]
    finally:
        await db.dispose()


async def stored_hash(database_url: str, user_id: str) -> str:
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            value = (await s.execute(select(User.password_hash).where(User.id == user_id))).scalar_one()  # type: ignore[call-overload,arg-type]
    finally:
        await db.dispose()
    assert isinstance(value, str)
    return value


async def add_member(database_url: str, t: Tenant, email: str, role: str, password: str) -> Tenant:
    """A second user in `t`'s organization."""
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            user = User(
                email=email,
                email_key=email.casefold(),
                password_hash=PasswordHasherService(FAST_HASH).hash_sync(password),
            )
            s.add(user)
            await s.flush()
            s.add(Membership(organization_id=t.org_id, user_id=user.id, role=role))
        return Tenant(t.org_id, t.slug, user.id, email, password)
    finally:
        await db.dispose()


# -- C-112: one answer for every failure ----------------------------------------------------------


async def test_every_failure_gives_the_same_answer(app, client, tenant: Tenant, database_url: str) -> None:
    """C-112: unknown email, wrong password, locked account, unknown or foreign organization, inactive
    user and a user without membership: the same HTTP status and the very same JSON body."""
    await make_tenant(database_url, slug="globex", email="owner@globex.test")
    locked = await make_tenant(database_url, slug="locked", email="locked@locked.test")
    dormant = await make_tenant(database_url, slug="dormant", email="dormant@dormant.test")
    await update_user(database_url, dormant.user_id, is_active=False)
    orphan = await make_tenant(database_url, slug="orphan", email="orphan@orphan.test")
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await s.execute(delete(Membership).where(Membership.user_id == orphan.user_id))  # type: ignore[arg-type]
    finally:
        await db.dispose()
    await lock_out(client, locked.email)

    responses = {
        "unknown email": await attempt(client, "nobody@acme.test", tenant.password),
        "wrong password": await attempt(client, tenant.email, "not the right password"),
        "locked, correct password": await attempt(client, locked.email, locked.password),
        "unknown organization": await attempt(client, tenant.email, tenant.password, org="no-such-org"),
        "not a member of the organization": await attempt(client, tenant.email, tenant.password, org="globex"),
        "inactive user": await attempt(client, dormant.email, dormant.password),
        "no membership at all": await attempt(client, orphan.email, orphan.password),
    }
    reference = responses["wrong password"]
    assert reference.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    for case, r in responses.items():
        assert r.status_code == reference.status_code, case
        assert r.headers["content-type"] == reference.headers["content-type"], case
        assert r.json() == reference.json(), case
        assert r.json()["errors"] == reference.json()["errors"], case

    # none of this was vacuous: each of these accounts works when nothing is wrong
    assert (await login(client, tenant))["organization"]["slug"] == "acme"
    r = await attempt(client, tenant.email, tenant.password, org="globex")
    assert refused(r)  # a real organization, but not the user's
    await update_user(database_url, dormant.user_id, is_active=True)
    assert (await attempt(client, dormant.email, dormant.password)).json()["data"]["login"]


async def test_failure_timing_does_not_tell_the_cases_apart(database_url: str, signing_key: str) -> None:
    """C-112: with real argon2id parameters, the median time of an unknown email, a wrong password, a
    locked account and an unknown organization stay within one band (every path runs one argon2)."""
    settings = make_settings(
        database_url,
        signing_key,
        password_hash_memory_kib=19_456,
        password_hash_time_cost=2,
        log_level="WARNING",
    )
    tenant = await make_tenant(database_url)
    locked = await make_tenant(database_url, slug="locked", email="locked@locked.test")
    app = create_app(settings)
    async with running(app) as client:
        throttle = app.state.services.throttle
        freeze_clock(app)  # the lock below outlasts the measurement
        # the first login rehashes the stored (fast, test) hash with the real parameters
        await login(client, tenant)
        assert (await stored_hash(database_url, tenant.user_id)).startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        await lock_out(client, locked.email)

        samples: dict[str, list[float]] = {"unknown": [], "wrong": [], "locked": [], "no-org": []}
        requests: dict[str, Callable[[int], tuple[str, str, str | None]]] = {
            "unknown": lambda i: (f"nobody{i}@acme.test", "not the right password", None),
            "wrong": lambda i: (tenant.email, "not the right password", None),
            "locked": lambda i: (locked.email, locked.password, None),
            "no-org": lambda i: (tenant.email, tenant.password, "no-such-org"),
        }
        for i in range(-3, 30):  # three warm-up rounds, then 30 samples each, interleaved
            for name, make in requests.items():
                email, password, org = make(i)
                started = time.perf_counter()
                r = await attempt(client, email, password, org)
                elapsed = time.perf_counter() - started
                assert refused(r), name
                if i >= 0:
                    samples[name].append(elapsed)
                if name in ("wrong", "no-org"):
                    await throttle.reset(tenant.email)  # keep measuring the unlocked path
    medians = {name: statistics.median(values) for name, values in samples.items()}
    fastest, slowest = min(medians.values()), max(medians.values())
    # one argon2id verification at these parameters costs well over the band's floor
    assert fastest > 0.005, medians
    assert slowest - fastest < max(0.025, 0.35 * slowest), medians


async def test_every_failure_makes_the_same_reads(database_url: str, signing_key: str) -> None:
    """C-112, counted rather than timed: an unknown email, a wrong password, a locked account and an
    unknown organization read the database the same number of times, so that no case answers sooner when
    the database is slow. A known account's failure also writes its `sign_ins` row: one statement more."""
    from sqlalchemy import event

    app = create_app(make_settings(database_url, signing_key, log_level="WARNING"))
    tenant = await make_tenant(database_url)
    locked = await make_tenant(database_url, slug="locked", email="locked@locked.test")
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    async with running(app) as client:
        freeze_clock(app)
        await lock_out(client, locked.email)
        engine = app.state.services.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            made: dict[str, Counter[str]] = {}
            cases = {
                "unknown": ("nobody@acme.test", "not the right password", None),
                "wrong": (tenant.email, "not the right password", None),
                "locked": (locked.email, locked.password, None),
                "no-org": (tenant.email, tenant.password, "no-such-org"),
            }
            # the first round starts the audit chains it writes to; of the later ones, each case keeps its fewest
            # statements of each kind (`&`): a periodic task of the gateway (the usage flush every 10 s, the
            # address blocks' reload) that runs while a case runs adds to that case alone, never takes away
            for round_ in range(3):
                for name, (email, password, org) in cases.items():
                    statements.clear()
                    assert refused(await attempt(client, email, password, org)), name
                    if round_ > 0:
                        made[name] = made[name] & Counter(statements) if name in made else Counter(statements)
                    await app.state.services.throttle.reset(tenant.email)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len({m["SELECT"] for m in made.values()}) == 1, made
    assert {name: m["INSERT"] - made["unknown"]["INSERT"] for name, m in made.items()} == {
        "unknown": 0,
        "wrong": 1,
        "locked": 1,
        "no-org": 1,
    }, made


# -- C-113: threshold, duration, backoff ----------------------------------------------------------


async def test_lock_refuses_the_correct_password_until_it_expires(
    app, client, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """C-113: 5 failures lock the (account, IP) pair; the 6th attempt with the correct password gets the
    generic answer without any verification; after the lock duration the password works again."""
    clock = freeze_clock(app)
    counts = count_verifications(app)
    caplog.set_level(logging.INFO, logger="portcullis")
    await lock_out(client, tenant.email)
    assert counts.verify == 5
    wrong = (await attempt(client, tenant.email, "not the right password")).json()
    for _ in range(3):
        r = await attempt(client, tenant.email, tenant.password)
        assert refused(r)
        assert r.json() == wrong
    assert counts.verify == 5  # refused before the password was looked at
    assert counts.argon2 == 9  # but each refusal still spent one argon2 run
    assert [rec.getMessage() for rec in caplog.records].count("authn_login_lock") == 1

    clock.advance(59)
    assert refused(await attempt(client, tenant.email, tenant.password))
    clock.advance(1)
    assert (await login(client, tenant))["user"]["email"] == tenant.email


async def test_backoff_doubles_and_caps(app, client, tenant: Tenant) -> None:
    """C-113/C-115: repeated locks of one pair last 60, 120, 240, 480 s, then 15 minutes at most; the
    lock is always temporary."""
    clock = freeze_clock(app)
    for seconds in (60, 120, 240, 480, 900, 900):
        await lock_out(client, tenant.email)
        clock.advance(seconds - 1)
        assert refused(await attempt(client, tenant.email, tenant.password)), seconds
        clock.advance(1)
    await login(client, tenant)


# -- C-114: the race ------------------------------------------------------------------------------


async def test_fifty_concurrent_guesses_get_at_most_five_verifications(app, client, tenant: Tenant) -> None:
    """C-114: 50 wrong passwords at once with threshold 5 → at most 5 real verifications, all 50 fail,
    and the pair is locked (even for the correct password)."""
    freeze_clock(app)
    counts = count_verifications(app)
    responses = await asyncio.gather(*(attempt(client, tenant.email, f"concurrent guess {i}") for i in range(50)))
    assert all(refused(r) for r in responses)
    assert len({r.text for r in responses}) == 1
    assert counts.verify <= 5
    assert counts.argon2 == 50  # every answer took one argon2 run
    assert refused(await attempt(client, tenant.email, tenant.password))
    assert counts.verify <= 5


async def test_concurrent_logins_do_not_starve_the_connection_pool(database_url: str, signing_key: str) -> None:
    """C-114: a login never waits for a second database connection while holding one, so a burst of
    sign-ins larger than the pool completes (instead of every request waiting on every other)."""
    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key, database_pool_size=2))
    async with running(app) as client:
        freeze_clock(app)
        clients = [client_from(app, f"198.51.100.{i + 1}") for i in range(24)]
        async with contextlib.AsyncExitStack() as stack:
            opened = [await stack.enter_async_context(c) for c in clients]
            started = time.perf_counter()
            ok = await asyncio.gather(*(attempt(c, tenant.email, tenant.password) for c in opened))
            wrong = await asyncio.gather(*(attempt(c, tenant.email, "not the password") for c in opened))
            elapsed = time.perf_counter() - started
        assert [r.status_code for r in ok] == [200] * 24
        assert all(r.json()["data"]["login"]["user"]["email"] == tenant.email for r in ok)
        assert all(refused(r) for r in wrong)
        assert elapsed < 20  # far below the pool's 30 s checkout timeout
        assert (await login(client, tenant))["user"]["email"] == tenant.email


# -- C-115: the lock is not a denial of service ---------------------------------------------------


async def test_lock_from_one_address_does_not_lock_out_another(app, tenant: Tenant) -> None:
    """C-115: the pair locked from the attacker's address leaves the user's own address working."""
    freeze_clock(app)
    async with running(app, client_ip=ATTACKER_IP) as attacker:
        await lock_out(attacker, tenant.email)
        assert refused(await attempt(attacker, tenant.email, tenant.password))
    async with running(app, client_ip=HOME_IP) as home:
        assert (await login(home, tenant))["user"]["email"] == tenant.email
    async with running(app, client_ip=ATTACKER_IP) as attacker:
        assert refused(await attempt(attacker, tenant.email, tenant.password))


async def test_admin_unlocks_a_member(app, client, tenant: Tenant, database_url: str) -> None:
    """C-115: an owner (members:manage) clears a member's lock with unlockUser; the pair works again."""
    freeze_clock(app)
    member = await add_member(database_url, tenant, "member@acme.test", "analyst", "member passphrase 2026")
    owner = await login(client, tenant)
    await lock_out(client, member.email)
    assert refused(await attempt(client, member.email, member.password))

    r = await gql(client, UNLOCK, {"id": member.user_id}, token=owner["accessToken"])
    assert r.json() == {"data": {"unlockUser": True}, "extensions": {"cost": cost_of(10)}}
    assert (await login(client, member))["user"]["email"] == member.email


async def test_unlock_user_is_scoped_and_guarded(app, client, tenant: Tenant, database_url: str) -> None:
    """C-115: unlockUser for another organization's user → NOT_FOUND (and it stays locked); anonymous →
    UNAUTHENTICATED; a viewer → FORBIDDEN naming the scope it lacks."""
    freeze_clock(app)
    other = await make_tenant(database_url, slug="globex", email="owner@globex.test")
    viewer = await add_member(database_url, tenant, "viewer@acme.test", "viewer", "viewer passphrase 2026")
    owner = await login(client, tenant)
    viewer_auth = await login(client, viewer)
    await lock_out(client, other.email)

    r = await gql(client, UNLOCK, {"id": other.user_id}, token=owner["accessToken"])
    assert error_codes(r.json()) == ["NOT_FOUND"]
    assert refused(await attempt(client, other.email, other.password))

    r = await gql(client, UNLOCK, {"id": "no-such-user"}, token=owner["accessToken"])
    assert error_codes(r.json()) == ["NOT_FOUND"]

    r = await gql(client, UNLOCK, {"id": tenant.user_id})
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]

    r = await gql(client, UNLOCK, {"id": tenant.user_id}, token=viewer_auth["accessToken"])
    body = r.json()
    assert error_codes(body) == ["FORBIDDEN"]
    assert ["members:manage"] in body["errors"][0]["extensions"]["requiredScopes"]
    assert not body.get("data")
    assert refused(await attempt(client, other.email, other.password))  # still locked


# -- C-116: distributed guessing ------------------------------------------------------------------


async def test_account_ceiling_refuses_new_addresses_only(database_url: str, signing_key: str) -> None:
    """C-116: after `lockout_account_ceiling` failures across many addresses, an address that never
    signed in to the account is refused without verification; a known address still works."""
    tenant = await make_tenant(database_url)
    app = create_app(make_settings(database_url, signing_key, lockout_account_ceiling=3))
    async with running(app, client_ip=HOME_IP) as home:
        freeze_clock(app)
        await login(home, tenant)
        for i in range(3):
            async with client_from(app, f"198.51.100.{i + 1}") as guesser:
                assert refused(await attempt(guesser, tenant.email, f"spray guess {i}"))
        counts = count_verifications(app)
        async with client_from(app, "198.51.100.200") as stranger:
            assert refused(await attempt(stranger, tenant.email, tenant.password))
        assert counts.verify == 0
        assert counts.argon2 == 1
        assert (await login(home, tenant))["user"]["email"] == tenant.email
        assert counts.verify == 1


# -- C-117: odd passwords -------------------------------------------------------------------------


async def test_huge_passwords_are_refused_before_hashing(app, client, tenant: Tenant) -> None:
    """C-117: a 1 MB password hits the body limit (413) or the input check; 2,000 characters are
    BAD_USER_INPUT; neither reaches argon2, and neither is a 500."""
    counts = count_verifications(app)
    r = await attempt(client, tenant.email, "x" * 1_000_000)
    assert r.status_code != 500
    assert r.status_code == 413 or error_codes(r.json()) == ["BAD_USER_INPUT"]
    r = await attempt(client, tenant.email, "y" * (1024 * 1024))
    assert r.status_code == 413
    r = await attempt(client, tenant.email, "z" * 2000)
    assert r.status_code != 500
    assert error_codes(r.json()) == ["BAD_USER_INPUT"]
    assert counts.verify == 0
    assert counts.argon2 == 0
    # a refused shape is not a counted failure: five real guesses are still needed to lock
    for _ in range(4):
        assert refused(await attempt(client, tenant.email, "wrong password"))
    await login(client, tenant)


async def test_nul_bytes_are_handled(client, tenant: Tenant) -> None:
    """C-117, C-133: a NUL byte in the password or the email is refused deterministically, never a 500:
    BAD_USER_INPUT before anything runs (the same for every account), or a generic failure."""
    for password in ("\x00", tenant.password + "\x00", "\x00" + tenant.password, tenant.password[:5] + "\x00"):
        r = await attempt(client, tenant.email, password)
        assert r.status_code != 500
        assert refused(r) or error_codes(r.json()) == ["BAD_USER_INPUT"], repr(password)
    for email in ("owner@acme.test\x00", "\x00owner@acme.test", "own\x00er@acme.test"):
        r = await attempt(client, email, tenant.password)
        assert r.status_code != 500
        assert error_codes(r.json()) in (["UNAUTHENTICATED"], ["BAD_USER_INPUT"]), repr(email)
    r = await attempt(client, tenant.email, tenant.password, org="acme\x00")
    assert r.status_code != 500
    assert error_codes(r.json()) in (["UNAUTHENTICATED"], ["BAD_USER_INPUT"])
    await login(client, tenant)


async def test_lone_surrogates_are_handled(client, tenant: Tenant) -> None:
    """C-117: JSON may carry a lone UTF-16 surrogate (\\ud800), which no UTF-8 encoder accepts: a
    deterministic refusal, never a 500."""
    cases = [
        (tenant.email, "\ud800"),
        (tenant.email, tenant.password + "\udfff"),
        ("owner\ud800@acme.test", tenant.password),
    ]

    async def send(email: str, password: str, org: str | None = None) -> httpx.Response:
        # escaped as \\uXXXX in the (ASCII) JSON body, the way a client would send it
        body = json.dumps({"query": LOGIN, "variables": {"email": email, "password": password, "org": org}})
        return await client.post("/graphql", content=body, headers={"content-type": "application/json"})

    for email, password in cases:
        r = await send(email, password)
        assert r.status_code != 500, (email, password)
        assert error_codes(r.json()) in (["UNAUTHENTICATED"], ["BAD_USER_INPUT"]), (email, password)
    r = await send(tenant.email, tenant.password, org="acme\ud800")
    assert r.status_code != 500
    assert error_codes(r.json()) in (["UNAUTHENTICATED"], ["BAD_USER_INPUT"])
    await login(client, tenant)


async def test_unicode_forms_are_one_password(app, client, tenant: Tenant, database_url: str) -> None:
    """C-117: passwords are NFKC-normalised, so the NFC and NFD spellings of one password both work."""
    nfc = unicodedata.normalize("NFC", "Crème brûlée à l'été 2026")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    hasher: PasswordHasherService = app.state.services.hasher
    await update_user(database_url, tenant.user_id, password_hash=hasher.hash_sync(nfd))
    assert (await attempt(client, tenant.email, nfc)).json()["data"]["login"]
    assert (await attempt(client, tenant.email, nfd)).json()["data"]["login"]
    assert refused(await attempt(client, tenant.email, "Creme brulee a l'ete 2026"))


async def test_difference_after_byte_72_matters(app, client, tenant: Tenant, database_url: str) -> None:
    """C-117: no truncation: a password differing only in its 73rd byte does not authenticate."""
    password = "p" * 72 + "1"
    hasher: PasswordHasherService = app.state.services.hasher
    await update_user(database_url, tenant.user_id, password_hash=hasher.hash_sync(password))
    assert refused(await attempt(client, tenant.email, "p" * 72 + "2"))
    assert refused(await attempt(client, tenant.email, "p" * 72))
    assert (await attempt(client, tenant.email, password)).json()["data"]["login"]


# -- C-095: nothing secret in the logs ------------------------------------------------------------

# Database drivers may trace statements with their parameters (aiosqlite does at DEBUG); they are
# judged separately below.
DRIVER_LOGGERS = ("aiosqlite", "sqlalchemy", "psycopg", "asyncpg")


@dataclass
class Captured:
    records: list[logging.LogRecord]
    printed: str
    secrets: dict[str, str]


async def sign_in_and_out_with_canaries(
    app: Any,
    client: httpx.AsyncClient,
    tenant: Tenant,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> Captured:
    """Failed and successful logins, a refresh, a refresh reuse and a password change, with the root
    logger at DEBUG; returns every record, everything printed, and the secrets that were in play."""
    canary = "P@ss-123-canary-XYZ"
    new_canary = "P@ss-456-canary-NEW-XYZ"
    hasher: PasswordHasherService = app.state.services.hasher
    await update_user(database_url, tenant.user_id, password_hash=hasher.hash_sync(canary))
    old_hash = await stored_hash(database_url, tenant.user_id)
    capsys.readouterr()
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    assert refused(await attempt(client, tenant.email, canary + "-wrong"))
    assert refused(await attempt(client, "nobody@acme.test", canary))
    assert refused(await attempt(client, tenant.email, canary, org="no-such-org"))
    first = (await attempt(client, tenant.email, canary)).json()["data"]["login"]
    refreshed = (await gql(client, REFRESH, {"t": first["refreshToken"]})).json()["data"]["refreshToken"]
    r = await gql(client, CHANGE, {"c": canary + "-wrong", "n": new_canary}, token=refreshed["accessToken"])
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    r = await gql(client, CHANGE, {"c": canary, "n": new_canary}, token=refreshed["accessToken"])
    assert r.json() == {"data": {"changePassword": True}, "extensions": {"cost": cost_of(10)}}
    second = (await attempt(client, tenant.email, new_canary)).json()["data"]["login"]
    assert refused(await attempt(client, tenant.email, canary))
    # a reused refresh token is a logged security event: the token itself must not be in it
    assert error_codes((await gql(client, REFRESH, {"t": first["refreshToken"]})).json()) == ["UNAUTHENTICATED"]

    records = list(caplog.records)
    printed = capsys.readouterr()
    new_hash = await stored_hash(database_url, tenant.user_id)
    assert new_hash != old_hash
    secrets = {
        "password": canary,
        "new password": new_canary,
        "wrong password": canary + "-wrong",
        "first access token": first["accessToken"],
        "first refresh token": first["refreshToken"],
        "refreshed access token": refreshed["accessToken"],
        "refreshed refresh token": refreshed["refreshToken"],
        "second access token": second["accessToken"],
        "second refresh token": second["refreshToken"],
        "old password hash": old_hash,
        "new password hash": new_hash,
        # the digest alone (the hash's last field) must not show up either
        "old hash digest": old_hash.rsplit("$", 1)[1],
        "new hash digest": new_hash.rsplit("$", 1)[1],
    }
    return Captured(records, printed.out + printed.err, secrets)


def rendered(records: list[logging.LogRecord]) -> str:
    """Each record as the production formatter writes it, plus its raw message, arguments and fields."""
    formatter = JsonFormatter()
    plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
    lines = []
    for rec in records:
        lines.append(formatter.format(rec))
        lines.append(plain.format(rec))
        lines.append(f"{rec.msg!r} {rec.args!r} {vars(rec)!r}")
    return "\n".join(lines)


def leaks(haystack: str, secrets: dict[str, str]) -> list[str]:
    found = [name for name, secret in secrets.items() if secret in haystack]
    if "canary" in haystack:  # any part of a canary, in any escaping
        found.append("canary fragment")
    return found


async def test_no_secret_reaches_the_logs(
    app,
    client,
    tenant: Tenant,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """C-095: no password, access token, refresh token or password hash in any record of the gateway
    and its libraries (root logger at DEBUG), nor in anything printed."""
    captured = await sign_in_and_out_with_canaries(app, client, tenant, database_url, caplog, capsys)
    ours = [r for r in captured.records if not r.name.startswith(DRIVER_LOGGERS)]
    names = {r.getMessage() for r in ours if r.name.startswith("portcullis")}
    # the capture is not vacuous: the events themselves were logged
    assert {"authn_login_fail", "authn_login_success", "authn_token_reuse"} <= names
    assert leaks(rendered(ours) + captured.printed, captured.secrets) == []


async def test_no_secret_reaches_the_database_driver_logs(
    database_url: str,
    signing_key: str,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """C-095: the same with the root logger at DEBUG from start-up, counting the database drivers' own
    statement traces."""
    caplog.set_level(logging.DEBUG)
    app = create_app(make_settings(database_url, signing_key))
    async with running(app) as client:
        captured = await sign_in_and_out_with_canaries(app, client, tenant, database_url, caplog, capsys)
    assert leaks(rendered(captured.records), captured.secrets) == []


# -- inactive and non-member users ----------------------------------------------------------------


async def test_inactive_user_gets_the_generic_answer(client, tenant: Tenant, database_url: str) -> None:
    reference = (await attempt(client, "nobody@acme.test", tenant.password)).json()
    await update_user(database_url, tenant.user_id, is_active=False)
    r = await attempt(client, tenant.email, tenant.password)
    assert refused(r)
    assert r.json() == reference
    await update_user(database_url, tenant.user_id, is_active=True)
    await login(client, tenant)


async def test_non_member_of_the_named_organization_gets_the_generic_answer(
    client, tenant: Tenant, database_url: str
) -> None:
    await make_tenant(database_url, slug="globex", email="owner@globex.test")
    reference = (await attempt(client, "nobody@acme.test", tenant.password, org="globex")).json()
    r = await attempt(client, tenant.email, tenant.password, org="globex")
    assert refused(r)
    assert r.json() == reference
    r = await attempt(client, tenant.email, tenant.password, org="acme")
    assert r.json()["data"]["login"]["organization"]["slug"] == "acme"
