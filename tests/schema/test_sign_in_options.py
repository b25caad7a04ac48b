"""signInOptions: what an organization's sign-in page may offer, asked before signing in, on SQLite and
PostgreSQL; the query root an anonymous caller introspects is never empty."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Tenant, error_codes, gql, login
from tests.saml_idp import TestIdp
from tests.schema.test_saml import configure
from tests.security_policy import set_policy

OPTIONS = "query($o: String!) { signInOptions(organization: $o) { organization password sso { protocol url } } }"


async def options(client: httpx.AsyncClient, slug: str, token: str | None = None) -> dict[str, object]:
    r = await gql(client, OPTIONS, {"o": slug}, token=token)
    assert r.status_code == 200, r.text
    return r.json()["data"]["signInOptions"]  # type: ignore[no-any-return]


async def test_an_organization_without_sso_offers_the_password(client: httpx.AsyncClient, tenant: Tenant) -> None:
    assert await options(client, tenant.slug) == {"organization": tenant.slug, "password": True, "sso": None}


async def test_an_unknown_organization_answers_as_one_without_sso(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """Nothing tells an organization that does not exist from one that has no single sign-on."""
    assert await options(client, "no-such-org") == {"organization": "no-such-org", "password": True, "sso": None}


async def test_sso_is_offered_while_a_connection_is_enabled_and_the_policy_allows_it(
    client: httpx.AsyncClient, tenant: Tenant, idp: TestIdp
) -> None:
    token = (await login(client, tenant))["accessToken"]
    created = (await configure(client, token, idp.metadata))["data"]["configureSaml"]
    sso = {"protocol": "SAML", "url": f"http://127.0.0.1:8000/auth/sso/{tenant.slug}"}
    assert await options(client, tenant.slug) == {"organization": tenant.slug, "password": True, "sso": sso}
    # SSO only (the owner kept as break-glass): the password form is not offered
    await set_policy(client, token, allowedSignInMethods=["SSO"], breakGlassOwners=[tenant.user_id])
    assert await options(client, tenant.slug) == {"organization": tenant.slug, "password": False, "sso": sso}
    # the policy no longer allows SSO: the connection is not offered, whatever it says
    await set_policy(client, token, allowedSignInMethods=["PASSWORD", "API_KEY"])
    assert await options(client, tenant.slug) == {"organization": tenant.slug, "password": True, "sso": None}
    await set_policy(client, token, allowedSignInMethods=["PASSWORD", "SSO", "API_KEY"])
    disabled = (await configure(client, token, idp.metadata, enabled=False))["data"]["configureSaml"]
    assert disabled["id"] == created["id"]
    assert disabled["enabled"] is False
    assert await options(client, tenant.slug) == {"organization": tenant.slug, "password": True, "sso": None}


@pytest.mark.parametrize("slug", ["", "Acme", "acme corp", "-acme", "a" * 64, "acme\x00", "../acme"])
async def test_a_value_that_is_no_slug_is_refused(client: httpx.AsyncClient, tenant: Tenant, slug: str) -> None:
    r = await gql(client, OPTIONS, {"o": slug})
    body = r.json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    # a NUL is refused before any resolver runs, as in every variable (C-133)
    assert ("cannot be stored" if "\x00" in slug else "slug") in body["errors"][0]["message"]


async def test_anonymous_introspection_is_a_valid_schema(client: httpx.AsyncClient) -> None:
    """What GraphiQL and code generators ask first, anonymous: the query root holds the public field, so the
    schema the answer describes builds and validates."""
    from graphql import build_client_schema, get_introspection_query, validate_schema

    r = await gql(client, get_introspection_query(descriptions=True))
    schema = build_client_schema(r.json()["data"])
    assert validate_schema(schema) == []
    query_type = schema.query_type
    assert query_type is not None
    assert list(query_type.fields) == ["signInOptions"]
