"""configureOidc and OIDC sign-in against addresses the gateway must not reach (C-132).

The guard is on in prod; these gateways run in the test environment with it turned on
(`PORTCULLIS_OUTBOUND_GUARD`), except one in prod itself. Every refusal is `BAD_USER_INPUT` on `issuer` with
one message, given before any connection: the loopback servers count the connections they accept.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from gateway.settings import InsecureSettingsError, Settings
from tests.conftest import error_codes, make_settings, sql
from tests.gateway.oidc.conftest import GATEWAY, configure, configure_node, running_gateway
from tests.idp.rogue_op import CLIENT_ID, CLIENT_SECRET
from tests.listeners import Answer, HttpServer, http_server, listening
from tests.services import free_port

REFUSED = "the issuer, or an endpoint its discovery document names, is at an address the gateway may not reach"
PROD = {
    "env": "prod",
    "session_cookie_secure": True,
    "api_key_pepper": "p" * 40,
    "cookie_secret": "c" * 40,
    "data_encryption_key": "d" * 40,
}


def refusal(body: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(e["message"], e["extensions"]["code"], e["extensions"].get("field")) for e in body.get("errors", [])]


def discovery(server: HttpServer, **endpoints: str) -> None:
    """A discovery document for `server` as issuer; `endpoints` replace the ones it names."""
    issuer = server.url()
    server.routes["/.well-known/openid-configuration"] = Answer(
        200,
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            **endpoints,
        },
    )


@pytest.mark.parametrize(
    "issuer",
    [
        "http://127.0.0.1:{port}",
        "http://localhost:{port}",
        "http://[::1]:{port}",
        "https://127.0.0.1:{port}",
        "https://[::ffff:127.0.0.1]:{port}",
        "https://[::ffff:7f00:1]:{port}",
        "https://10.0.0.1",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1",
        "https://[fd00:ec2::254]",
    ],
)
async def test_c132_configure_refuses_an_issuer_on_a_private_address(
    database_url: str, signing_key: str, issuer: str
) -> None:
    with listening() as listener:
        async with running_gateway(database_url, signing_key, outbound_guard=True) as gw:
            body = await configure(gw, issuer.format(port=listener.port), CLIENT_ID, CLIENT_SECRET)
        assert refusal(body) == [(REFUSED, "BAD_USER_INPUT", "issuer")], body
        assert listener.accepted == 0
    assert sql(database_url, "SELECT count(*) FROM sso_connections")[0][0] == 0


async def test_c132_prod_refuses_loopback_without_being_told(database_url: str, signing_key: str) -> None:
    with listening() as listener:
        async with running_gateway(database_url, signing_key, **PROD) as gw:
            for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
                body = await configure(gw, f"https://{host}:{listener.port}", CLIENT_ID, CLIENT_SECRET)
                assert refusal(body) == [(REFUSED, "BAD_USER_INPUT", "issuer")], body
        assert listener.accepted == 0


async def test_c132_open_and_closed_ports_answer_alike_and_at_once(database_url: str, signing_key: str) -> None:
    """An open port that never answers would hold an unguarded fetch for the whole timeout, a closed one
    fails at once: that difference scans ports. Refused before connecting, both answer the same, quickly."""
    with listening() as listener:
        async with running_gateway(database_url, signing_key, outbound_guard=True, oidc_http_timeout_seconds=5) as gw:
            answers = []
            for port in (listener.port, free_port(), listener.port):
                started = time.monotonic()
                body = await configure(gw, f"http://127.0.0.1:{port}", CLIENT_ID, CLIENT_SECRET)
                answers.append((refusal(body), time.monotonic() - started))
        assert listener.accepted == 0
    assert all(found == [(REFUSED, "BAD_USER_INPUT", "issuer")] for found, _ in answers), answers
    assert max(elapsed for _, elapsed in answers) < 2.5, answers


async def test_c132_discovery_naming_an_internal_endpoint_is_refused(database_url: str, signing_key: str) -> None:
    """The issuer is allowed (an on-premises host), but its document sends the token or key requests
    elsewhere on the gateway's network."""
    with listening("127.0.0.2") as inside, http_server() as idp:
        async with running_gateway(
            database_url, signing_key, outbound_guard=True, outbound_allowed_hosts=["127.0.0.1"]
        ) as gw:
            for endpoint in ("token_endpoint", "jwks_uri", "userinfo_endpoint"):
                discovery(idp, **{endpoint: f"http://127.0.0.2:{inside.port}/x"})
                body = await configure(gw, idp.url(), CLIENT_ID, CLIENT_SECRET)
                assert refusal(body) == [(REFUSED, "BAD_USER_INPUT", "issuer")], (endpoint, body)
            # the authorization endpoint is the browser's to visit, not the gateway's
            discovery(idp, authorization_endpoint=f"http://127.0.0.2:{inside.port}/authorize")
            assert (await configure(gw, idp.url(), CLIENT_ID, CLIENT_SECRET)).get("data"), "allowed issuer refused"
        assert inside.accepted == 0


async def test_c132_discovery_redirecting_to_a_private_address_is_refused(database_url: str, signing_key: str) -> None:
    with listening("127.0.0.2") as inside, http_server() as idp:
        idp.routes["/.well-known/openid-configuration"] = Answer.redirect(
            f"http://127.0.0.2:{inside.port}/.well-known/openid-configuration"
        )
        async with running_gateway(
            database_url, signing_key, outbound_guard=True, outbound_allowed_hosts=["127.0.0.1"]
        ) as gw:
            body = await configure(gw, idp.url(), CLIENT_ID, CLIENT_SECRET)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert inside.accepted == 0
        assert [path for path, _ in idp.requests] == ["/.well-known/openid-configuration"]


async def test_c132_sign_in_refuses_a_provider_that_moved_its_endpoints_inside(
    database_url: str, signing_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Configured while its document was fine; by sign-in it names an internal token endpoint."""
    caplog.set_level(logging.INFO, logger="portcullis.security")
    with listening("127.0.0.2") as inside, http_server() as idp:
        discovery(idp)
        async with running_gateway(
            database_url, signing_key, outbound_guard=True, outbound_allowed_hosts=["127.0.0.1"]
        ) as gw:
            assert (await configure(gw, idp.url(), CLIENT_ID, CLIENT_SECRET)).get("data")
            discovery(idp, token_endpoint=f"http://127.0.0.2:{inside.port}/token")
            r = await gw.browser.get(f"{GATEWAY}/auth/sso/acme")
        assert r.status_code == 502, r.text
        assert "Sign-in failed" in r.text
        assert "location" not in r.headers
        assert inside.accepted == 0
    reasons = [getattr(rec, "reason", None) for rec in caplog.records if rec.getMessage() == "authn_sso_fail"]
    assert reasons == ["oidc_address_refused"]


async def test_c132_an_allowed_on_premises_provider_signs_in(
    database_url: str, signing_key: str, node_issuer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The allow-list lets a named host through: the whole protocol (discovery, token, keys, userinfo) runs
    over the guarded, address-pinned transport against the real provider. What the gateway then decides
    about the account is not the guard's business: only a refusal of the protocol (`oidc_*`) fails here."""
    from tests.gateway.oidc.test_login import sign_in

    caplog.set_level(logging.INFO, logger="portcullis.security")
    async with running_gateway(
        database_url, signing_key, outbound_guard=True, outbound_allowed_hosts=["127.0.0.1"]
    ) as gw:
        await configure_node(gw, node_issuer)
        r = await sign_in(gw)
    events = [
        (rec.getMessage(), getattr(rec, "reason", None))
        for rec in caplog.records
        if rec.getMessage() in ("authn_sso_success", "authn_sso_fail")
    ]
    assert len(events) == 1, events
    event, reason = events[0]
    if event == "authn_sso_success":
        assert r.status_code == 303, r.text
    else:
        assert not str(reason).startswith("oidc_"), events


async def test_c132_the_guard_is_on_in_prod_only_unless_set(signing_key: str) -> None:
    def settings(**values: Any) -> Settings:
        return make_settings("sqlite://", signing_key, **values)

    assert settings(**PROD).outbound_guard_enabled
    assert not settings().outbound_guard_enabled
    assert settings(outbound_guard=True).outbound_guard_enabled
    with pytest.raises(InsecureSettingsError, match="PORTCULLIS_OUTBOUND_GUARD"):
        settings(**PROD, outbound_guard=False)
    allowed = settings(**PROD, outbound_allowed_hosts="idp.corp.example, 10.20.0.0/16")
    assert allowed.outbound_allowed_hosts == ["idp.corp.example", "10.20.0.0/16"]
    with pytest.raises(ValueError, match="host name"):
        settings(outbound_allowed_hosts="https://idp.corp.example/")
