"""The session cookie's MAC and the CSRF token (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from identity.browser_sessions import BrowserSessionPolicy, BrowserSessions
from identity.oidc import check_issuer_url

SID = "0b6f7d36-1f7e-4a8e-9a53-2b1c8e2d9f10"


def sessions(secret: str = "s" * 40, *, secure: bool = True) -> BrowserSessions:
    return BrowserSessions(secret, BrowserSessionPolicy(), secure=secure)


def test_cookie_round_trip() -> None:
    b = sessions()
    assert b.session_id(b.cookie_value(SID)) == SID


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),
        lambda v: v.split(".")[0],
        lambda v: v + ".x",
        lambda v: "other-session." + v.split(".")[1],
        lambda v: "",
        lambda v: "x" * 5000,
        lambda v: "../../etc." + v.split(".")[1],
    ],
)
def test_tampered_cookie_names_no_session(mangle: object) -> None:
    b = sessions()
    assert b.session_id(mangle(b.cookie_value(SID))) is None  # type: ignore[operator]


def test_cookie_of_another_secret_is_refused() -> None:
    assert sessions("t" * 40).session_id(sessions().cookie_value(SID)) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    b = sessions()
    token = b.csrf_token(SID)
    assert b.csrf_ok(SID, token)
    assert not b.csrf_ok("another-session", token)
    assert not b.csrf_ok(SID, None)
    assert not b.csrf_ok(SID, "")
    assert token not in b.cookie_value(SID)


def test_cookie_attributes() -> None:
    session, csrf = sessions().set_cookie_headers(SID)
    assert session.startswith("__Host-portcullis=")
    for attribute in ("Path=/", "HttpOnly", "SameSite=Lax", "Secure"):
        assert attribute in session
    assert "Domain" not in session
    assert csrf.startswith("__Host-portcullis-csrf=")
    assert "HttpOnly" not in csrf
    assert "Secure" not in sessions(secure=False).set_cookie_headers(SID)[0]


def test_idle_and_touch() -> None:
    policy = BrowserSessionPolicy(idle_seconds=600, touch_interval_seconds=60)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert not policy.idle_expired(now - timedelta(seconds=599), now)
    assert policy.idle_expired(now - timedelta(seconds=600), now)
    assert not policy.needs_touch(now - timedelta(seconds=59), now)
    assert policy.needs_touch(now - timedelta(seconds=60), now)


@pytest.mark.parametrize(
    ("issuer", "dev_ok", "prod_ok"),
    [
        ("https://idp.example.com", True, True),
        ("https://login.microsoftonline.com/tenant/v2.0", True, True),
        ("http://127.0.0.1:8080", True, False),
        ("http://localhost:8080", True, False),
        ("http://[::1]:8080", True, False),
        ("http://idp.example.com", False, False),
        ("http://10.0.0.1", False, False),
        ("https://idp.example.com/?x=1", False, False),
        ("https://idp.example.com/#f", False, False),
        ("https://u:p@idp.example.com", False, False),
        ("javascript:alert(1)", False, False),
        ("https://idp.example.com/\nx", False, False),
    ],
)
def test_issuer_urls(issuer: str, dev_ok: bool, prod_ok: bool) -> None:
    for allow, expected in ((True, dev_ok), (False, prod_ok)):
        try:
            check_issuer_url(issuer, allow_loopback_http=allow)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted is expected, (issuer, allow)


async def test_transaction_store_values_are_taken_once_and_expire() -> None:
    from identity.oidc import TransactionStore

    now = [1000.0]
    store = TransactionStore(clock=lambda: now[0])
    await store.set("k", "v", 10)
    assert await store.get("k") == "v"
    assert await store.take("k") == "v"
    assert await store.take("k") is None
    await store.set("k", "v", 10)
    now[0] += 11
    assert await store.take("k") is None


async def test_transaction_store_stays_bounded() -> None:
    from identity.oidc import TransactionStore

    store = TransactionStore()
    store.MAX_LOCAL_ENTRIES = 100  # type: ignore[misc]
    for i in range(1000):
        await store.set(f"k{i}", "v", 600)
    assert len(store._local) <= 100
    assert await store.get("k999") == "v"
