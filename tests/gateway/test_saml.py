"""SAML SP-initiated login through the real HTTP app, against a pysaml2 identity provider.

Every attack case starts from a real response that the IdP signed for a real AuthnRequest of this
browser, then changes it (and, where the attack needs it, has the IdP sign the changed assertion
again). A refusal is the generic page, with no cookie set, and nothing reaches the sign-in callable.
The protocol checks do not depend on the database, so these run on SQLite; tests/gateway/
test_saml_shared.py runs the flow on PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.app import create_app
from gateway.saml import FAILURE_PAGE
from identity.sso import ExternalIdentity
from store.models import SsoConnection
from tests.conftest import CLIENT_IP, Tenant, claim_domain, gql, login, make_settings, make_tenant, sql
from tests.saml_idp import NS, TestIdp, assertion, b64, make_keypair, parse, to_text

PUBLIC_URL = "https://gw.example.com"
ACS = f"{PUBLIC_URL}/auth/saml/acme/acs"
SP_ENTITY = f"{PUBLIC_URL}/auth/saml/acme/metadata"
SAML = "{" + NS["saml"] + "}"
SAMLP = "{" + NS["samlp"] + "}"
DS = "{" + NS["ds"] + "}"

CONFIGURE = """
mutation C($input: SamlConnectionInput!) {
  configureSaml(input: $input) { id kind enabled issuer entityId defaultRole jitProvisioning allowedDomains }
}
"""

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class Recorder:
    """Stands in for the sign-in step: records what it was handed and redirects to `return_to`."""

    calls: list[tuple[str, ExternalIdentity, str]] = field(default_factory=list)

    async def __call__(
        self,
        request: Request,
        connection: SsoConnection,
        identity: ExternalIdentity,
        return_to: str,
        link_user_id: str | None = None,
    ) -> Response:
        self.calls.append((connection.id, identity, return_to))
        return RedirectResponse(return_to, status_code=303)


@dataclass
class Sso:
    app: Any
    client: httpx.AsyncClient
    idp: TestIdp
    recorder: Recorder
    tenant: Tenant
    token: str
    database_url: str

    def browser(self) -> httpx.AsyncClient:
        return browser(self.app)

    async def start(self, client: httpx.AsyncClient | None = None, return_to: str | None = None) -> str:
        c = client or self.client
        r = await c.get("/auth/sso/acme", params={} if return_to is None else {"return_to": return_to})
        assert r.status_code == 302, r.text
        return r.headers["location"]

    async def post(self, xml: str | bytes, client: httpx.AsyncClient | None = None, **form: str) -> httpx.Response:
        c = client or self.client
        return await c.post("/auth/saml/acme/acs", data={"SAMLResponse": b64(xml), **form})

    async def configure(self, **values: Any) -> dict[str, Any]:
        body = (
            await gql(
                self.client, CONFIGURE, {"input": {"idpMetadataXml": self.idp.metadata, **values}}, token=self.token
            )
        ).json()
        assert body.get("data"), body
        return body["data"]["configureSaml"]  # type: ignore[no-any-return]

    def users(self) -> int:
        return int(sql(self.database_url, "SELECT count(*) FROM users")[0][0])


def browser(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 40000))
    return httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL)


@pytest.fixture
def idp() -> Iterator[TestIdp]:
    server = TestIdp()
    yield server
    server.close()


async def sso_setup(
    database_url: str, signing_key: str, idp: TestIdp, *, slug: str = "acme", **overrides: Any
) -> AsyncIterator[Sso]:
    tenant = await make_tenant(database_url, slug=slug, email=f"owner@{slug}.test")
    claim_domain(database_url, tenant.org_id, f"{slug}.test")
    recorder = Recorder()
    settings = make_settings(database_url, signing_key, public_url=PUBLIC_URL, **overrides)
    app = create_app(settings, saml_login=recorder)
    async with app.router.lifespan_context(app), browser(app) as client:
        token = (await login(client, tenant))["accessToken"]
        sso = Sso(app, client, idp, recorder, tenant, token, database_url)
        await sso.configure()
        metadata = await client.get(f"/auth/saml/{slug}/metadata")
        assert metadata.status_code == 200
        idp.trust_sp(metadata.text)
        yield sso


@pytest.fixture
async def sso(database_url: str, signing_key: str, idp: TestIdp) -> AsyncIterator[Sso]:
    async for value in sso_setup(database_url, signing_key, idp):
        yield value


def assert_refused(sso: Sso, r: httpx.Response, users_before: int | None = None, status: int = 400) -> None:
    assert r.status_code == status, r.text
    assert r.text == FAILURE_PAGE
    assert "set-cookie" not in r.headers
    assert sso.recorder.calls == []
    if users_before is not None:
        assert sso.users() == users_before


def refusal_codes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str | None]]:
    return [
        (r.reason, r.code)
        for r in caplog.records  # type: ignore[attr-defined]
        if r.name == "portcullis.saml" and r.getMessage() == "authn_sso_fail"
    ]  # type: ignore[attr-defined]


def saml_time(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def evil_subject(node: Any, subject: str = "admin-1", email: str = "admin@acme.test") -> None:
    """Make an assertion speak for someone else."""
    node.find("saml:Subject/saml:NameID", NS).text = subject
    for attribute in node.iter(f"{SAML}Attribute"):
        if attribute.get("FriendlyName") == "email":
            attribute.find("saml:AttributeValue", NS).text = email


def strip_signature(node: Any) -> Any:
    sig = node.find("ds:Signature", NS)
    if sig is not None:
        node.remove(sig)
    return node


XSW_CODES = {
    "WRONG_SIGNED_ELEMENT",
    "ID_NOT_FOUND_IN_SIGNED_ELEMENT",
    "DUPLICATED_ID_IN_SIGNED_ELEMENTS",
    "INVALID_SIGNED_ELEMENT",
    "DUPLICATED_REFERENCE_IN_SIGNED_ELEMENTS",
    "UNEXPECTED_SIGNED_ELEMENTS",
    "WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE",
    "WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION",
    "WRONG_NUMBER_OF_SIGNATURES",
    "WRONG_NUMBER_OF_ASSERTIONS",
    "INVALID_XML_FORMAT",
    "INVALID_SIGNATURE",
    "NO_SIGNED_ASSERTION",
}


async def assert_xsw_refused(sso: Sso, xml: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    users = sso.users()
    assert_refused(sso, await sso.post(xml), users)
    [(reason, code)] = refusal_codes(caplog)
    assert reason.startswith("saml_")
    assert code in XSW_CODES, code


# -- the flow -------------------------------------------------------------------------------------


async def test_login_hands_the_validated_identity_over(sso: Sso) -> None:
    url = await sso.start(return_to="/reports?month=11")
    assert url.startswith(sso.idp.sso_url + "?SAMLRequest=")
    request = sso.idp.read_request(url)
    assert request.assertion_consumer_service_url == ACS
    assert request.issuer.text == SP_ENTITY
    cookie = next(c for c in sso.client.cookies.jar if c.name == "__Host-portcullis-saml")
    assert cookie.secure
    assert cookie.path == "/"
    r = await sso.post(sso.idp.respond(url, email="Ann@Acme.test", groups=("engineering", "ops")))
    assert r.status_code == 303
    assert r.headers["location"] == "/reports?month=11"
    [(connection_id, identity, return_to)] = sso.recorder.calls
    assert identity == ExternalIdentity(
        protocol="saml",
        issuer=sso.idp.entity_id,
        subject="ann-123",
        email="ann@acme.test",
        email_verified=True,
        name="Ann",
        groups=("engineering", "ops"),
    )
    assert return_to == "/reports?month=11"
    assert connection_id == sql(sso.database_url, "SELECT id FROM sso_connections")[0][0]
    assert '__Host-portcullis-saml=""' in r.headers["set-cookie"]  # the pending request is spent


async def test_sp_metadata_names_the_acs_and_entity_id(sso: Sso) -> None:
    r = await sso.client.get("/auth/saml/acme/metadata")
    assert r.headers["content-type"].startswith("application/samlmetadata+xml")
    root = parse(r.text)
    assert root.get("entityID") == SP_ENTITY
    md = "{urn:oasis:names:tc:SAML:2.0:metadata}"
    acs = root.find(f"{md}SPSSODescriptor/{md}AssertionConsumerService")
    assert acs.get("Location") == ACS
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    sp = root.find(f"{md}SPSSODescriptor")
    assert sp.get("WantAssertionsSigned") == "true"
    assert sp.find(f"{md}NameIDFormat").text == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"


async def test_email_nameid_is_the_email_without_an_attribute(sso: Sso) -> None:
    url = await sso.start()
    xml = sso.idp.respond(url, subject="bo@acme.test", name_id_format=NAMEID_FORMAT_EMAILADDRESS, email="")
    root = parse(xml)
    for attribute in list(assertion(root).iter(f"{SAML}Attribute")):
        if attribute.get("FriendlyName") == "email":
            attribute.getparent().remove(attribute)
    r = await sso.post(sso.idp.sign_assertion(to_text(root)))
    assert r.status_code == 303
    assert sso.recorder.calls[0][1].email == "bo@acme.test"


# -- C-054 to C-061: XML signature wrapping ---------------------------------------------------------


def signed_response(sso: Sso, url: str) -> Any:
    """A response whose Response and Assertion are both signed (the XSW1/XSW2 target)."""
    return parse(sso.idp.sign_response(sso.idp.respond(url, sign_response=True)))


async def test_c054_xsw1_evil_root_with_the_signed_response_inside_its_signature(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    original = signed_response(sso, await sso.start())
    evil = copy.deepcopy(original)
    evil.set("ID", "_evil_response")
    signature = evil.find("ds:Signature", NS)
    evil_subject(assertion(evil))
    signature.append(original)
    await assert_xsw_refused(sso, to_text(evil), caplog)


async def test_c055_xsw2_evil_root_with_the_signed_response_as_a_detached_sibling(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    original = signed_response(sso, await sso.start())
    evil = copy.deepcopy(original)
    evil.set("ID", "_evil_response")
    signature = evil.find("ds:Signature", NS)
    evil_subject(assertion(evil))
    signature.addprevious(original)
    await assert_xsw_refused(sso, to_text(evil), caplog)


async def test_c056_xsw3_evil_assertion_before_the_signed_one(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = strip_signature(copy.deepcopy(signed))
    evil.set("ID", "_evil_assertion")
    evil_subject(evil)
    signed.addprevious(evil)
    await assert_xsw_refused(sso, to_text(root), caplog)


async def test_c057_xsw4_signed_assertion_inside_the_evil_one(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = strip_signature(copy.deepcopy(signed))
    evil.set("ID", "_evil_assertion")
    evil_subject(evil)
    signed.addprevious(evil)
    evil.append(signed)
    await assert_xsw_refused(sso, to_text(root), caplog)


async def test_c058_xsw5_evil_copy_keeps_the_signature_original_appended_at_the_end(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = copy.deepcopy(signed)
    evil.set("ID", "_evil_assertion")
    evil_subject(evil)
    signed.addprevious(evil)
    root.append(strip_signature(signed))
    await assert_xsw_refused(sso, to_text(root), caplog)


async def test_c059_xsw6_evil_copy_envelops_the_signature_which_envelops_the_original(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = copy.deepcopy(signed)
    evil.set("ID", "_evil_assertion")
    evil_subject(evil)
    signed.addprevious(evil)
    evil.find("ds:Signature", NS).append(strip_signature(signed))
    await assert_xsw_refused(sso, to_text(root), caplog)


async def test_c060_xsw7_original_in_an_extensions_element(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = strip_signature(copy.deepcopy(signed))
    evil_subject(evil)
    signed.addprevious(evil)
    extensions = root.makeelement(f"{SAMLP}Extensions")
    root.find("saml:Issuer", NS).addnext(extensions)
    extensions.append(signed)
    await assert_xsw_refused(sso, to_text(root), caplog)


async def test_c061_xsw8_original_in_an_object_inside_the_signature(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    signed = assertion(root)
    evil = copy.deepcopy(signed)
    evil_subject(evil)
    signed.addprevious(evil)
    obj = root.makeelement(f"{DS}Object")
    evil.find("ds:Signature", NS).append(obj)
    obj.append(strip_signature(signed))
    await assert_xsw_refused(sso, to_text(root), caplog)


# -- C-062 to C-065: signatures and the NameID ------------------------------------------------------


async def test_c062_response_and_assertion_unsigned(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    assert_refused(sso, await sso.post(sso.idp.respond(await sso.start(), sign_assertion=False)))
    assert refusal_codes(caplog)[0][1] in ("NO_SIGNED_ASSERTION", "NO_SIGNATURE_FOUND")


async def test_c063_signed_response_unsigned_assertion(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    xml = sso.idp.sign_response(sso.idp.respond(await sso.start(), sign_assertion=False, sign_response=True))
    assert parse(xml).find("ds:Signature", NS) is not None
    assert_refused(sso, await sso.post(xml))
    assert refusal_codes(caplog) == [("saml_invalid", "NO_SIGNED_ASSERTION")]


async def test_c064_attacker_key_with_its_certificate_in_keyinfo(
    sso: Sso, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    attacker = make_keypair(tmp_path, "attacker")
    root = parse(sso.idp.respond(await sso.start()))
    evil_subject(assertion(root))
    assertion(root).find("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS).text = attacker.cert_b64
    xml = sso.idp.sign_assertion(to_text(root), keys=attacker)
    assert attacker.cert_b64 in xml
    assert_refused(sso, await sso.post(xml))
    assert refusal_codes(caplog) == [("saml_invalid", "INVALID_SIGNATURE")]


async def test_c065_comment_in_the_nameid_does_not_truncate_it(sso: Sso) -> None:
    from lxml import etree

    root = parse(sso.idp.respond(await sso.start(), email="admin@acme.test.evil.com"))
    nameid = assertion(root).find("saml:Subject/saml:NameID", NS)
    nameid.text = "admin@acme.test"
    comment = etree.Comment("")
    comment.tail = ".evil.com"
    nameid.append(comment)
    xml = sso.idp.sign_assertion(to_text(root))
    assert "admin@acme.test<!---->.evil.com" in xml
    r = await sso.post(xml)
    assert r.status_code == 303
    [(_, identity, _)] = sso.recorder.calls
    assert identity.subject == "admin@acme.test.evil.com"
    assert identity.email == "admin@acme.test.evil.com"


# -- C-066 to C-071: the checks python3-saml leaves to its caller, and time ----------------------------


def set_all(root: Any, tag: str, attribute: str, value: str | None) -> None:
    for node in assertion(root).iter(tag):
        if value is None:
            node.attrib.pop(attribute, None)
        else:
            node.set(attribute, value)


async def test_c066_audience_of_another_sp(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    for audience in assertion(root).iter(f"{SAML}Audience"):
        audience.text = "https://other-sp"
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_invalid", "WRONG_AUDIENCE")]


async def test_c066_audience_restriction_absent(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    for restriction in list(assertion(root).iter(f"{SAML}AudienceRestriction")):
        restriction.getparent().remove(restriction)
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_audience", None)]


async def test_c067_replayed_response(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    url = await sso.start()
    pending = sso.client.cookies.get("__Host-portcullis-saml")
    xml = sso.idp.respond(url)
    assert (await sso.post(xml)).status_code == 303
    sso.recorder.calls.clear()
    # the attacker kept the pending-request cookie too
    sso.client.cookies.set("__Host-portcullis-saml", pending, domain="gw.example.com")
    assert_refused(sso, await sso.post(xml))
    assert refusal_codes(caplog) == [("saml_replay", None)]


async def test_c068_in_response_to_mismatching(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    root.set("InResponseTo", "ONELOGIN_0000000000000000000000000000000000000000")
    assert_refused(sso, await sso.post(to_text(root)))
    assert refusal_codes(caplog) == [("saml_invalid", "WRONG_INRESPONSETO")]


async def test_c068_in_response_to_absent_unsolicited(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    xml = sso.idp.respond(await sso.start(), in_response_to=None)
    assert "InResponseTo" not in xml
    assert_refused(sso, await sso.post(xml))
    assert refusal_codes(caplog) == [("saml_in_response_to", None)]


async def test_c068_in_response_to_a_request_of_another_browser(sso: Sso) -> None:
    async with sso.browser() as other:
        other_url = await sso.start(other)
        await sso.start()
        assert_refused(sso, await sso.post(sso.idp.respond(other_url)))
        # and a browser that started nothing has no pending request at all
        async with sso.browser() as third:
            assert_refused(sso, await sso.post(sso.idp.respond(other_url), client=third))


@pytest.mark.parametrize(
    "destination",
    [
        f"{PUBLIC_URL}/auth/saml/acme/acs/../other",
        f"{ACS}-evil",
        f"{ACS}/",
        None,
    ],
)
async def test_c069_destination_not_exactly_the_acs(
    sso: Sso, caplog: pytest.LogCaptureFixture, destination: str | None
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    if destination is None:
        del root.attrib["Destination"]
    else:
        root.set("Destination", destination)
    assert_refused(sso, await sso.post(to_text(root)))
    assert refusal_codes(caplog) == [("saml_destination", None)]


async def test_c070_recipient_superstring(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    set_all(root, f"{SAML}SubjectConfirmationData", "Recipient", ACS + ".other-sp.example")
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_recipient", None)]


@pytest.mark.parametrize(
    ("tag", "attribute", "delta", "code"),
    [
        ("Conditions", "NotBefore", timedelta(minutes=10), "ASSERTION_TOO_EARLY"),
        ("Conditions", "NotOnOrAfter", timedelta(minutes=-6), "ASSERTION_EXPIRED"),
        ("SubjectConfirmationData", "NotOnOrAfter", timedelta(seconds=-1), "WRONG_SUBJECTCONFIRMATION"),
    ],
)
async def test_c071_outside_the_validity_window(
    sso: Sso, caplog: pytest.LogCaptureFixture, tag: str, attribute: str, delta: timedelta, code: str
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    set_all(root, f"{SAML}{tag}", attribute, saml_time(delta))
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_invalid", code)]


async def test_c071_clock_skew_within_five_minutes_is_tolerated(sso: Sso) -> None:
    root = parse(sso.idp.respond(await sso.start()))
    set_all(root, f"{SAML}Conditions", "NotBefore", saml_time(timedelta(minutes=4)))
    assert (await sso.post(sso.idp.sign_assertion(to_text(root)))).status_code == 303


# -- C-072 to C-076: parsing, size, algorithms, structure, RelayState ------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback port that records any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(b"connected")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


async def test_c072_external_entities_are_neither_read_nor_fetched(
    sso: Sso, listener: tuple[int, list[bytes]], tmp_path: Any
) -> None:
    port, seen = listener
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-content")
    for system in (f"file://{secret}", f"http://127.0.0.1:{port}/x"):
        xml = sso.idp.respond(await sso.start())
        body = xml.split("?>", 1)[1] if xml.startswith("<?xml") else xml
        doc = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "{system}">]>' + body.replace("Ann</", "&x;</", 1)
        r = await sso.post(doc)
        assert_refused(sso, r)
        assert "top-secret-content" not in r.text
    await asyncio.sleep(0.3)
    assert seen == []


async def test_c073_billion_laughs_is_refused_quickly(sso: Sso) -> None:
    xml = sso.idp.respond(await sso.start())
    body = xml.split("?>", 1)[1] if xml.startswith("<?xml") else xml
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    doc = f"<!DOCTYPE r [{entities}]>" + body.replace("Ann</", "&a9;</", 1)
    started = time.monotonic()
    assert_refused(sso, await sso.post(doc))
    assert time.monotonic() - started < 2.0


async def test_c073_ten_megabyte_response_is_refused_unread(sso: Sso) -> None:
    await sso.start()
    started = time.monotonic()
    r = await sso.client.post("/auth/saml/acme/acs", data={"SAMLResponse": "A" * (10 * 1024 * 1024)})
    assert r.status_code == 413
    assert "set-cookie" not in r.headers
    assert sso.recorder.calls == []
    assert time.monotonic() - started < 2.0


async def test_c073_response_over_the_saml_limit_is_refused(sso: Sso) -> None:
    await sso.start()
    r = await sso.client.post("/auth/saml/acme/acs", data={"SAMLResponse": "A" * (400 * 1024)})
    assert_refused(sso, r, status=413)


@pytest.mark.parametrize(
    ("sign_alg", "digest_alg", "code"),
    [
        (SIG_RSA_SHA1, DIGEST_SHA256, "DEPRECATED_SIGNATURE_METHOD"),
        (SIG_RSA_SHA256, DIGEST_SHA1, "DEPRECATED_DIGEST_METHOD"),
    ],
)
async def test_c074_sha1_is_refused(
    sso: Sso, caplog: pytest.LogCaptureFixture, sign_alg: str, digest_alg: str, code: str
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    xml = sso.idp.respond(await sso.start(), sign_alg=sign_alg, digest_alg=digest_alg)
    assert_refused(sso, await sso.post(xml))
    assert refusal_codes(caplog) == [("saml_invalid", code)]


async def test_c075_two_assertions(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    second = copy.deepcopy(assertion(root))
    second.set("ID", "_second")
    assertion(root).addnext(second)
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root), assertion_id="_second")))
    assert refusal_codes(caplog) == [("saml_invalid", "WRONG_NUMBER_OF_ASSERTIONS")]


async def test_c075_status_not_success(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    root.find("samlp:Status/samlp:StatusCode", NS).set("Value", "urn:oasis:names:tc:SAML:2.0:status:Requester")
    assert_refused(sso, await sso.post(to_text(root)))
    assert refusal_codes(caplog) == [("saml_invalid", "STATUS_CODE_IS_NOT_SUCCESS")]


async def test_c075_issuer_of_another_idp(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    root.find("saml:Issuer", NS).text = "https://other-idp.example"
    assertion(root).find("saml:Issuer", NS).text = "https://other-idp.example"
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_invalid", "WRONG_ISSUER")]


async def test_c075_two_issuers_in_the_response(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    issuer = root.find("saml:Issuer", NS)
    extra = copy.deepcopy(issuer)
    extra.text = "https://other-idp.example"
    issuer.addnext(extra)
    assert_refused(sso, await sso.post(to_text(root)))
    assert refusal_codes(caplog) == [("saml_invalid", "INVALID_XML_FORMAT")]


async def test_c075_duplicated_attribute_names(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    statement = assertion(root).find("saml:AttributeStatement", NS)
    groups = next(a for a in statement if a.get("Name") == "groups")
    evil = copy.deepcopy(groups)
    evil.find("saml:AttributeValue", NS).text = "admins"
    statement.append(evil)
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_invalid", "DUPLICATED_ATTRIBUTE_NAME_FOUND")]


async def test_c075_empty_nameid(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    root = parse(sso.idp.respond(await sso.start()))
    assertion(root).find("saml:Subject/saml:NameID", NS).text = ""
    assert_refused(sso, await sso.post(sso.idp.sign_assertion(to_text(root))))
    assert refusal_codes(caplog) == [("saml_invalid", "EMPTY_NAMEID")]


@pytest.mark.parametrize("return_to", ["https://evil.com/", "//evil.com", "/\\evil.com", "javascript:alert(1)"])
async def test_c076_relay_state_and_return_to_never_leave_the_site(sso: Sso, return_to: str) -> None:
    url = await sso.start(return_to=return_to)
    r = await sso.post(sso.idp.respond(url), RelayState="https://evil.com")
    assert r.status_code == 303
    assert r.headers["location"] == "/"
    assert sso.recorder.calls[0][2] == "/"


async def test_c076_return_to_outside_the_allowlist(database_url: str, signing_key: str, idp: TestIdp) -> None:
    async for sso in sso_setup(database_url, signing_key, idp, frontend_return_paths="/app,/reports"):
        assert sso.idp.read_request(await sso.start(return_to="/admin/x")).id
        url = await sso.start(return_to="/app/settings")
        assert (await sso.post(sso.idp.respond(url))).headers["location"] == "/app/settings"


# -- tenants and connection settings ---------------------------------------------------------------


async def test_organization_without_sso(sso: Sso) -> None:
    await make_tenant(sso.database_url, slug="nosso", email="owner@nosso.test")
    r = await sso.client.get("/auth/sso/nosso")
    assert r.status_code == 404
    assert "set-cookie" not in r.headers
    assert (await sso.client.get("/auth/saml/nosso/metadata")).status_code == 404
    assert (await sso.client.get("/auth/sso/no-such-org")).status_code == 404
    # a response for acme, posted to the organization without SSO
    url = await sso.start()
    r = await sso.client.post("/auth/saml/nosso/acs", data={"SAMLResponse": b64(sso.idp.respond(url))})
    assert_refused(sso, r)


async def test_disabled_connection(sso: Sso) -> None:
    url = await sso.start()
    assert (await sso.configure(enabled=False))["enabled"] is False
    assert_refused(sso, await sso.post(sso.idp.respond(url)))
    assert (await sso.client.get("/auth/sso/acme")).status_code == 404


async def test_email_outside_the_allowed_domains(sso: Sso) -> None:
    await sso.configure(allowedDomains=["acme.test"])
    users = sso.users()
    assert_refused(sso, await sso.post(sso.idp.respond(await sso.start(), email="ann@evil.test")), users, 403)
    assert (await sso.post(sso.idp.respond(await sso.start(), email="ann@acme.test"))).status_code == 303


async def test_jit_disabled_meets_an_unknown_user(sso: Sso) -> None:
    await sso.configure(jitProvisioning=False)
    users = sso.users()
    assert_refused(sso, await sso.post(sso.idp.respond(await sso.start(), email="new@acme.test")), users, 403)
    # a member of the organization is not unknown
    r = await sso.post(sso.idp.respond(await sso.start(), subject="owner-1", email=sso.tenant.email))
    assert r.status_code == 303
    assert sso.recorder.calls[0][1].subject == "owner-1"


async def test_signing_in_provisions_the_user_and_opens_a_browser_session(
    database_url: str, signing_key: str, idp: TestIdp
) -> None:
    """The gateway's own sign-in step (no callable given): just-in-time provisioning keyed by (IdP entity
    id, NameID), the session cookie, a GraphQL query with it, and the SSO success in the audit chain."""
    async for sso in sso_setup(database_url, signing_key, idp):
        sso.app.state.saml_routes.login = sso.app.state.saml_routes.sign_in
        await sso.configure(roleMapping={"engineering": "analyst"}, defaultRole="viewer")
        async with sso.browser() as b:
            r = await sso.post(
                sso.idp.respond(
                    await sso.start(b, return_to="/app"),
                    subject="ann-7",
                    email="ann@acme.test",
                    groups=("engineering",),
                ),
                client=b,
            )
            assert r.status_code == 303, r.text
            assert r.headers["location"] == "/app"
            cookies = r.headers.get_list("set-cookie")
            assert any(c.startswith("__Host-portcullis=") and "HttpOnly" in c for c in cookies)
            me = (await b.get("/graphql", params={"query": "{ me { user { email } role authMethod } }"})).json()
            assert me["data"]["me"] == {"user": {"email": "ann@acme.test"}, "role": "analyst", "authMethod": "saml"}
        [link] = sql(
            database_url, "SELECT i.issuer, i.subject, u.email FROM sso_identities i JOIN users u ON u.id = i.user_id"
        )
        assert (link[1], link[2]) == ("ann-7", "ann@acme.test")
        assert sql(database_url, "SELECT count(*) FROM audit_log WHERE action = 'authn_sso_success'")[0][0] == 1


async def test_sign_in_routes_ignore_a_stale_credential(sso: Sso) -> None:
    """A browser still carrying an expired session can sign in again: the SSO routes run anonymously."""
    r = await sso.client.get("/auth/sso/acme", headers={"Authorization": "Bearer expired.or.garbage"})
    assert r.status_code == 302
    url = r.headers["location"]
    r = await sso.client.post(
        "/auth/saml/acme/acs",
        data={"SAMLResponse": b64(sso.idp.respond(url))},
        headers={
            "Cookie": "__Host-portcullis=stale; "
            + "__Host-portcullis-saml="
            + (sso.client.cookies.get("__Host-portcullis-saml") or "")
        },
    )
    assert r.status_code == 303
    # everywhere else that credential is still refused
    assert (await sso.client.get("/graphql", headers={"Authorization": "Bearer expired.or.garbage"})).status_code == 401


async def test_a_login_started_for_one_organization_cannot_finish_at_another(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="portcullis.saml")
    beta = await make_tenant(sso.database_url, slug="beta", email="owner@beta.test")
    token = (await login(sso.client, beta))["accessToken"]
    body = (await gql(sso.client, CONFIGURE, {"input": {"idpMetadataXml": sso.idp.metadata}}, token=token)).json()
    assert body["data"]["configureSaml"]["kind"] == "saml"
    root = parse(sso.idp.respond(await sso.start()))
    root.set("Destination", f"{PUBLIC_URL}/auth/saml/beta/acs")
    r = await sso.client.post("/auth/saml/beta/acs", data={"SAMLResponse": b64(to_text(root))})
    assert_refused(sso, r)
    assert refusal_codes(caplog) == [("saml_no_pending_request", None)]
