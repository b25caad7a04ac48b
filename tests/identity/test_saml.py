"""identity.saml's pure parts: the pending-request cookie, return_to, IdP metadata, the replay cache."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from identity.saml import (
    LocalReplayCache,
    PendingRequest,
    SamlMetadataError,
    ServiceProvider,
    open_pending,
    parse_idp_metadata,
    pending_key,
    seal_pending,
)
from tests.saml_idp import TestIdp

KEY = pending_key("a cookie secret of at least thirty-two characters")


def pending(expires_in: int = 600) -> PendingRequest:
    return PendingRequest("ONELOGIN_abc", "org-1", "conn-1", "/reports", int(time.time()) + expires_in)


def test_pending_request_round_trips() -> None:
    assert open_pending(seal_pending(pending(), KEY), KEY) == pending()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),
        lambda v: "e" + v[1:],
        lambda v: v.split(".")[0],
        lambda v: v + ".x",
        lambda v: "",
        lambda v: "x" * 5000,
    ],
)
def test_pending_request_tampered_is_none(tamper: object) -> None:
    assert open_pending(tamper(seal_pending(pending(), KEY)), KEY) is None  # type: ignore[operator]


def test_pending_request_of_another_key_or_expired_is_none() -> None:
    assert open_pending(seal_pending(pending(), pending_key("another secret")), KEY) is None
    assert open_pending(seal_pending(pending(expires_in=-1), KEY), KEY) is None


def test_sp_urls_come_from_the_public_url() -> None:
    sp = ServiceProvider.for_tenant("https://gw.example.com/base", "acme")
    assert sp.entity_id == "https://gw.example.com/base/auth/saml/acme/metadata"
    assert sp.acs_url == "https://gw.example.com/base/auth/saml/acme/acs"


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdp]:
    server = TestIdp()
    yield server
    server.close()


def test_idp_metadata(idp: TestIdp) -> None:
    metadata = parse_idp_metadata(idp.metadata)
    assert metadata.entity_id == idp.entity_id
    assert metadata.sso_url == idp.sso_url
    assert metadata.certificates == (idp.keys.cert_b64,)


def test_idp_metadata_with_an_unreadable_certificate(idp: TestIdp) -> None:
    with pytest.raises(SamlMetadataError, match="certificate"):
        parse_idp_metadata(idp.metadata.replace(idp.keys.cert_b64, "bm90IGEgY2VydGlmaWNhdGU="))


async def test_local_replay_cache_forgets_after_the_ttl() -> None:
    now = [100.0]
    cache = LocalReplayCache(clock=lambda: now[0])
    assert await cache.first_use("a", 10)
    assert not await cache.first_use("a", 10)
    now[0] += 11
    assert await cache.first_use("a", 10)
