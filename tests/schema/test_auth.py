"""Password login, refresh rotation and reuse, logout and password change, over HTTP."""

from __future__ import annotations

from tests.conftest import LOGIN, Tenant, cost_of, error_codes, gql, login

ME = "{ me { user { email } organization { slug } role authMethod permissions } }"
REFRESH = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"


async def test_login_then_me(client, tenant: Tenant) -> None:
    auth = await login(client, tenant)
    assert auth["organization"]["slug"] == "acme"
    r = await gql(client, ME, token=auth["accessToken"])
    assert r.status_code == 200
    me = r.json()["data"]["me"]
    assert me["user"]["email"] == tenant.email
    assert me["role"] == "owner"
    assert me["authMethod"] == "password"
    assert "plan:manage" in me["permissions"]


async def test_email_is_case_insensitive(client, tenant: Tenant) -> None:
    r = await gql(client, LOGIN, {"email": "OWNER@Acme.Test", "password": tenant.password})
    assert r.json()["data"]["login"]["user"]["email"] == tenant.email


async def test_refresh_rotates_and_reuse_revokes_the_family(client, tenant: Tenant) -> None:
    """C-032: a spent refresh token revokes the whole family, including its successor."""
    auth = await login(client, tenant)
    r1 = (await gql(client, REFRESH, {"t": auth["refreshToken"]})).json()["data"]["refreshToken"]
    assert r1["refreshToken"] != auth["refreshToken"]
    assert (await gql(client, ME, token=r1["accessToken"])).status_code == 200

    reused = (await gql(client, REFRESH, {"t": auth["refreshToken"]})).json()
    assert error_codes(reused) == ["UNAUTHENTICATED"]
    # the successor is dead too, and so is the session's access token
    assert error_codes((await gql(client, REFRESH, {"t": r1["refreshToken"]})).json()) == ["UNAUTHENTICATED"]
    assert (await gql(client, ME, token=r1["accessToken"])).status_code == 401


async def test_logout_ends_the_session(client, tenant: Tenant) -> None:
    """C-030: after logout both the access token and the refresh token are refused at once."""
    auth = await login(client, tenant)
    assert (await gql(client, "mutation { logout }", token=auth["accessToken"])).json() == {
        "data": {"logout": True},
        "extensions": {"cost": cost_of(10)},
    }
    assert (await gql(client, ME, token=auth["accessToken"])).status_code == 401
    assert error_codes((await gql(client, REFRESH, {"t": auth["refreshToken"]})).json()) == ["UNAUTHENTICATED"]


async def test_refresh_token_is_not_an_access_token(client, tenant: Tenant) -> None:
    """C-029: a refresh token presented as a Bearer token is refused."""
    auth = await login(client, tenant)
    r = await gql(client, ME, token=auth["refreshToken"])
    assert r.status_code == 401


async def test_bad_refresh_tokens(client) -> None:
    for bad in ["", "x" * 10_000, "ptr_unknown", None]:
        body = (await gql(client, REFRESH, {"t": bad})).json()
        assert error_codes(body) == ["UNAUTHENTICATED"], bad


CHANGE = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }"


async def test_change_password_ends_other_sessions(client, tenant: Tenant) -> None:
    """C-031: a password change terminates the user's other sessions, not the current one."""
    first = await login(client, tenant)
    second = await login(client, tenant)
    new = "a brand new passphrase 2026"
    r = await gql(client, CHANGE, {"c": tenant.password, "n": new}, token=second["accessToken"])
    assert r.json() == {"data": {"changePassword": True}, "extensions": {"cost": cost_of(10)}}
    assert (await gql(client, ME, token=second["accessToken"])).status_code == 200
    assert (await gql(client, ME, token=first["accessToken"])).status_code == 401
    assert error_codes((await gql(client, REFRESH, {"t": first["refreshToken"]})).json()) == ["UNAUTHENTICATED"]
    # the old password no longer works, the new one does
    assert error_codes((await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()) == [
        "UNAUTHENTICATED"
    ]
    assert (await gql(client, LOGIN, {"email": tenant.email, "password": new})).json()["data"]["login"]


async def test_concurrent_password_changes_one_wins(client, tenant: Tenant) -> None:
    """Two changes from two sessions at once, both given the current password: the hashing happens before
    either writes, so one commits and the other, finding the password changed under it, is refused; the
    winner's new password is the one that signs in."""
    import asyncio

    first, second = await login(client, tenant), await login(client, tenant)
    news = ["first new passphrase 2026", "second new passphrase 2026"]
    answers = await asyncio.gather(
        *(
            gql(client, CHANGE, {"c": tenant.password, "n": n}, token=auth["accessToken"])
            for auth, n in zip((first, second), news, strict=True)
        )
    )
    won = [n for n, r in zip(news, answers, strict=True) if (r.json().get("data") or {}).get("changePassword")]
    lost = [r for r in answers if not (r.json().get("data") or {}).get("changePassword")]
    assert len(won) == 1
    assert error_codes(lost[0].json()) == ["UNAUTHENTICATED"]
    for password in [tenant.password, *news]:
        r = await gql(client, LOGIN, {"email": tenant.email, "password": password})
        assert bool((r.json().get("data") or {}).get("login")) is (password == won[0]), password


async def test_change_password_needs_the_current_password(client, tenant: Tenant) -> None:
    auth = await login(client, tenant)
    r = await gql(
        client, CHANGE, {"c": "not the password at all", "n": "another good passphrase"}, token=auth["accessToken"]
    )
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
    assert (await gql(client, LOGIN, {"email": tenant.email, "password": tenant.password})).json()["data"]["login"]


async def test_change_password_policy(client, tenant: Tenant) -> None:
    auth = await login(client, tenant)
    for bad in ["short", "password1234", tenant.email, "x" * 257, tenant.password]:
        r = await gql(client, CHANGE, {"c": tenant.password, "n": bad}, token=auth["accessToken"])
        assert error_codes(r.json()) == ["BAD_USER_INPUT"], bad
    assert (await gql(client, ME, token=auth["accessToken"])).status_code == 200


async def test_change_password_anonymous(client) -> None:
    r = await gql(client, CHANGE, {"c": "x", "n": "y"})
    assert error_codes(r.json()) == ["UNAUTHENTICATED"]
