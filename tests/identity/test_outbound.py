"""The outbound guard (C-132): which addresses a tenant's URL may reach, pinning, redirects, timing.

Requests go through `GuardedTransport` over real sockets to servers on loopback addresses; host names that
the system cannot resolve (`*.test`) are answered by a resolver given to the policy, so a request that
reaches its server proves the connection went to the checked address without a second lookup.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Sequence

import httpx2
import pytest

from identity.outbound import OutboundPolicy, OutboundRefused, is_public_address, parse_allowed_hosts
from tests.listeners import Answer, http_server, listening, tls_contexts
from tests.services import free_port


def names(table: dict[str, list[str]]) -> OutboundPolicy:
    """A resolver answering from `table`, on a guard with nothing allowed yet (see `allowing`)."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return OutboundPolicy.of(enabled=True, require_https=False, resolver=resolve)


def allowing(policy: OutboundPolicy, *hosts: str) -> OutboundPolicy:
    return OutboundPolicy.of(
        enabled=policy.enabled, require_https=policy.require_https, allowed_hosts=hosts, resolver=policy.resolver
    )


async def fetch(
    policy: OutboundPolicy, url: str, *, follow_redirects: bool = False, verify: ssl.SSLContext | bool = True
) -> httpx2.Response:
    async with httpx2.AsyncClient(
        transport=policy.transport(verify=verify), follow_redirects=follow_redirects, timeout=5
    ) as client:
        return await client.get(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("2002:808:808::1", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("100.100.100.200", False),
        ("169.254.169.254", False),
        ("168.63.129.16", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.0.192", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b:1::1", False),
        ("2002:7f00:1::", False),
        ("2002:a9fe:a9fe::", False),
        ("2001::1", False),
        ("2001:db8::1", False),
    ],
)
def test_c132_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://127.0.0.2:{port}/",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://127.1:{port}/",
        "http://2130706433:{port}/",
        "http://0.0.0.0:{port}/",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]/",
        "https://100.64.0.1/",
        "https://224.0.0.1/",
        "https://[fe80::1]/",
    ],
)
async def test_c132_a_forbidden_address_is_refused_without_a_connection(url: str) -> None:
    policy = OutboundPolicy.of(enabled=True, require_https=False)
    with listening() as listener:
        with pytest.raises(OutboundRefused) as refused:
            await fetch(policy, url.format(port=listener.port))
        assert refused.value.reason == "outbound_address_refused"
        assert listener.accepted == 0


async def test_c132_a_name_with_any_private_address_is_refused() -> None:
    """One public and one private answer: the connection could go either way, so the name is refused."""
    policy = names(
        {
            "mixed.test": ["93.184.215.14", "10.0.0.7"],
            "public.test": ["93.184.215.14"],
            "mapped.test": ["::ffff:192.168.0.1"],
        }
    )
    for host in ("mixed.test", "mapped.test"):
        with pytest.raises(OutboundRefused):
            await policy.addresses(f"https://{host}/")
    assert await policy.addresses("https://public.test/") == [ipaddress.ip_address("93.184.215.14")]


async def test_c132_open_and_closed_private_ports_are_refused_alike_and_at_once() -> None:
    """An open port that would never answer and a closed one: the same refusal, before any connection."""
    policy = OutboundPolicy.of(enabled=True, require_https=False)
    outcomes = []
    with listening() as listener:
        for port in (listener.port, free_port()):
            started = time.monotonic()
            with pytest.raises(OutboundRefused) as refused:
                await fetch(policy, f"http://127.0.0.1:{port}/.well-known/openid-configuration")
            outcomes.append((refused.value.reason, time.monotonic() - started))
        assert listener.accepted == 0
    assert outcomes[0][0] == outcomes[1][0] == "outbound_address_refused"
    assert max(elapsed for _, elapsed in outcomes) < 1.0, outcomes


async def test_c132_a_name_that_does_not_resolve_is_refused_like_a_forbidden_one() -> None:
    with pytest.raises(OutboundRefused) as refused:
        await fetch(names({}), "https://internal.test/")
    assert refused.value.reason == "outbound_unresolvable"


async def test_c132_redirect_to_a_private_address_is_refused_at_that_hop() -> None:
    policy = OutboundPolicy.of(enabled=True, require_https=False, allowed_hosts=["127.0.0.1"])
    with listening("127.0.0.2") as inside, http_server() as allowed:
        allowed.routes["/start"] = Answer.redirect(f"http://127.0.0.2:{inside.port}/admin")
        allowed.routes["/elsewhere"] = Answer.redirect("/ok")
        allowed.routes["/ok"] = Answer(200, {"ok": True})
        assert (await fetch(policy, allowed.url() + "/elsewhere", follow_redirects=True)).json() == {"ok": True}
        with pytest.raises(OutboundRefused):
            await fetch(policy, allowed.url() + "/start", follow_redirects=True)
        assert inside.accepted == 0
        assert [path for path, _ in allowed.requests] == ["/elsewhere", "/ok", "/start"]


async def test_c132_allowed_names_and_ranges_pass() -> None:
    base = names({"idp.corp.test": ["10.20.30.40"], "other.corp.test": ["10.20.30.41"], "v6.corp.test": ["fd12::5"]})
    policy = allowing(base, "IdP.Corp.Test.", "10.20.30.41/32", "[fd12::/64]")
    assert await policy.addresses("https://idp.corp.test/") == [ipaddress.ip_address("10.20.30.40")]
    assert await policy.addresses("https://other.corp.test/") == [ipaddress.ip_address("10.20.30.41")]
    assert await policy.addresses("https://v6.corp.test/") == [ipaddress.ip_address("fd12::5")]
    assert await policy.addresses("https://10.20.30.41/") == [ipaddress.ip_address("10.20.30.41")]
    # a name passes by its name: its address written as a literal, or a name under it, does not
    for url in ("https://10.20.30.40/", "https://sub.idp.corp.test/"):
        with pytest.raises(OutboundRefused):
            await policy.addresses(url)


async def test_c132_the_connection_goes_to_the_checked_address_with_the_host_name_kept() -> None:
    """`idp.test` is unknown to the system resolver: the request arrives only if the transport connected
    to the address the policy checked, without looking the name up again."""
    with http_server() as server:
        server.routes["/doc"] = Answer(200, {"ok": True})
        policy = allowing(names({"idp.test": ["127.0.0.1"]}), "127.0.0.1")
        r = await fetch(policy, f"http://idp.test:{server.port}/doc")
        assert r.json() == {"ok": True}
        assert server.requests == [("/doc", f"idp.test:{server.port}")]


async def test_c132_tls_is_verified_for_the_host_name_while_connecting_to_the_address() -> None:
    server_tls, client_tls = tls_contexts("idp.test")
    with http_server(tls=server_tls) as server:
        server.routes["/doc"] = Answer(200, {"ok": True})
        policy = allowing(names({"idp.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}), "127.0.0.1")
        r = await fetch(policy, f"https://idp.test:{server.port}/doc", verify=client_tls)
        assert r.json() == {"ok": True}
        assert server.requests == [("/doc", f"idp.test:{server.port}")]
        # the certificate names idp.test: the same address under another name fails verification
        with pytest.raises(httpx2.ConnectError, match=r"(?i)certificate|hostname"):
            await fetch(policy, f"https://other.test:{server.port}/doc", verify=client_tls)


async def test_c132_only_http_and_https_and_only_https_when_required() -> None:
    strict = OutboundPolicy.of(enabled=True, require_https=True, allowed_hosts=["127.0.0.1"])
    with listening() as listener:
        for url in (f"http://127.0.0.1:{listener.port}/", "ftp://127.0.0.1/", "file:///etc/passwd"):
            with pytest.raises(OutboundRefused):
                await strict.addresses(url)
        with pytest.raises(OutboundRefused):
            await fetch(strict, f"http://127.0.0.1:{listener.port}/")
        assert listener.accepted == 0


async def test_c132_off_the_guard_lets_loopback_through() -> None:
    """Off (outside prod, by default), requests reach loopback as before; `check_url` refuses nothing."""
    with http_server() as server:
        server.routes["/doc"] = Answer(200, {"ok": True})
        off = OutboundPolicy.of(enabled=False, require_https=False)
        await off.check_url(server.url() + "/doc")
        assert (await fetch(off, server.url() + "/doc")).json() == {"ok": True}
        with pytest.raises(OutboundRefused):
            await OutboundPolicy.of(enabled=True, require_https=False).check_url(server.url() + "/doc")
        assert len(server.requests) == 1


@pytest.mark.parametrize(
    "entry", ["not a host", "idp..corp", "https://idp.corp", "idp.corp/path", "10.0.0.0/33", "é.corp"]
)
def test_allow_list_entries_are_names_addresses_or_ranges(entry: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        parse_allowed_hosts([entry])


def test_allow_list_is_normalised() -> None:
    hosts, networks = parse_allowed_hosts(["IdP.Corp.", " 10.0.0.0/8 ", "[::1]", "192.168.1.5", ""])
    assert hosts == frozenset({"idp.corp"})
    assert networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.5/32"),
    )
