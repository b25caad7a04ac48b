"""A SAML identity provider for the tests: pysaml2's `Server`, run in the test process.

It reads the gateway's real AuthnRequests and answers with real signed responses (pysaml2 signs
through the `xmlsec1` command). Attack cases take such a response apart with lxml and, where the
attack needs a valid signature over changed content, have pysaml2 sign the changed assertion again
with the IdP's key, exactly as a compromised-content-but-honest-key case would look.
"""

from __future__ import annotations

import base64
import copy
import datetime
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.mdstore import MetadataStore
from saml2.metadata import entity_descriptor
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

XMLSEC1 = shutil.which("xmlsec1")
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
ASSERTION_NODE = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


@dataclass
class KeyPair:
    key_file: str
    cert_file: str
    cert_b64: str


def make_keypair(directory: Path, name: str = "idp") -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / f"{name}.key", directory / f"{name}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return KeyPair(str(key_file), str(cert_file), base64.b64encode(der).decode())


class TestIdp:
    __test__ = False

    def __init__(self, entity_id: str = "https://idp.example.org/idp", keys: KeyPair | None = None) -> None:
        if XMLSEC1 is None:
            from tests.conftest import unavailable

            unavailable("xmlsec1 is not installed (Debian package xmlsec1; .ci/run installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="portcullis-idp-"))
        self.entity_id = entity_id
        self.sso_url = entity_id.rsplit("/", 1)[0] + "/sso"
        self.keys = keys or make_keypair(self.dir)
        self.config = IdPConfig()
        self.config.load(
            {
                "entityid": entity_id,
                "service": {
                    "idp": {
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                        "policy": {"default": {"lifetime": {"minutes": 15}, "attribute_restrictions": None}},
                        "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                    }
                },
                "key_file": self.keys.key_file,
                "cert_file": self.keys.cert_file,
                "xmlsec_binary": XMLSEC1,
                "delete_tmpfiles": True,
            }
        )
        self.server = Server(config=self.config)

    @property
    def metadata(self) -> str:
        return str(entity_descriptor(self.config))

    def trust_sp(self, sp_metadata: str) -> None:
        if self.server.metadata is None:
            store = MetadataStore(attrc=self.config.attribute_converters, config=self.config)
            self.server.metadata = self.config.metadata = store
        self.server.metadata.load("inline", sp_metadata)

    def read_request(self, redirect_url: str) -> Any:
        query = parse_qs(urlsplit(redirect_url).query)
        assert "RelayState" not in query
        return self.server.parse_authn_request(query["SAMLRequest"][0], BINDING_HTTP_REDIRECT).message

    def respond(
        self,
        redirect_url: str,
        *,
        subject: str = "ann-123",
        email: str = "ann@acme.test",
        name: str = "Ann",
        groups: tuple[str, ...] = ("engineering",),
        in_response_to: Any = "request",
        sign_assertion: bool = True,
        sign_response: bool = False,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        name_id_format: str = NAMEID_FORMAT_PERSISTENT,
        extra: dict[str, list[str]] | None = None,
        authn_context: str = PASSWORD_CONTEXT,
    ) -> str:
        """The IdP's answer to the AuthnRequest the gateway redirected to, as XML."""
        request = self.read_request(redirect_url)
        identity: dict[str, list[str]] = {"email": [email], "name": [name], "groups": list(groups)}
        identity.update(extra or {})
        response = self.server.create_authn_response(
            identity=identity,
            userid=subject,
            in_response_to=request.id if in_response_to == "request" else in_response_to,
            destination=request.assertion_consumer_service_url,
            sp_entity_id=request.issuer.text,
            name_id=NameID(format=name_id_format, text=subject),
            authn={"class_ref": authn_context},
            sign_assertion=sign_assertion,
            sign_response=sign_response,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
        )
        return str(response)

    def sign_assertion(self, xml: str | bytes, assertion_id: str | None = None, keys: KeyPair | None = None) -> str:
        """Sign (again) the assertion with this id, after its content was changed, with pysaml2."""
        root = parse(xml)
        target = (
            root.find(".//saml:Assertion", NS)
            if assertion_id is None
            else root.find(f".//saml:Assertion[@ID='{assertion_id}']", NS)
        )
        assert target is not None
        return str(
            self.server.sec.sign_statement(
                to_text(root),
                ASSERTION_NODE,
                key_file=(keys or self.keys).key_file,
                node_id=target.get("ID"),
            )
        )

    def sign_response(self, xml: str | bytes, keys: KeyPair | None = None) -> str:
        root = parse(xml)
        return str(
            self.server.sec.sign_statement(
                to_text(root),
                "urn:oasis:names:tc:SAML:2.0:protocol:Response",
                key_file=(keys or self.keys).key_file,
                node_id=root.get("ID"),
            )
        )

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def parse(xml: str | bytes) -> Any:
    data = xml.encode() if isinstance(xml, str) else xml
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def to_text(root: Any) -> str:
    return etree.tostring(root).decode()


def b64(xml: str | bytes) -> str:
    return base64.b64encode(xml.encode() if isinstance(xml, str) else xml).decode()


def assertion(root: Any) -> Any:
    found = root.find("saml:Assertion", NS)
    assert found is not None
    return found


def signature_template(root: Any) -> Any:
    """A copy of the assertion's ds:Signature, to place where a resigned node needs one."""
    sig = assertion(root).find("ds:Signature", NS)
    return copy.deepcopy(sig)
