"""SAML 2.0 service provider, one per tenant: SP metadata, AuthnRequests, and responses validated into
an `ExternalIdentity`.

python3-saml does the XML work (schema validation, signature checks, the XSW defences) in strict
mode with signed assertions required. It leaves four checks to its caller (security design §5.4),
which `validate_response` adds, in the order the OWASP SAML cheat sheet gives them:

1. `InResponseTo` MUST be present and equal the id of the AuthnRequest this browser started
   (python3-saml skips the check when either is absent, so an unsolicited response would pass);
2. the Response `Destination` MUST be present and equal the ACS URL exactly (python3-saml: prefix);
3. an `AudienceRestriction` MUST be present and name exactly this SP (python3-saml: optional);
4. every bearer `SubjectConfirmationData@Recipient` MUST equal the ACS URL (python3-saml: substring);

plus a replay cache of (IdP, assertion id), kept until the assertion expires, in Redis when several
processes run. Every value read after validation comes from the signed assertion only.

The SP's URLs come from the configured public URL, never from the request's Host header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from identity.sso import MFA_AUTHN_CONTEXTS, ExternalIdentity

log = logging.getLogger("portcullis.saml")

NAMEID_FORMAT = OneLogin_Saml2_Constants.NAMEID_PERSISTENT
EMAIL_NAMEID_FORMAT = OneLogin_Saml2_Constants.NAMEID_EMAIL_ADDRESS
CLOCK_DRIFT_SECONDS = OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT
MAX_METADATA_BYTES = 256 * 1024
MAX_RESPONSE_BYTES = 256 * 1024  # base64 of a SAMLResponse; real ones are a few KiB
MAX_CERTIFICATES = 4
PENDING_LIFETIME_SECONDS = 600


class SamlMetadataError(ValueError):
    """IdP metadata that cannot be used; the message is safe to show the administrator."""


class SamlFailure(Exception):
    """A refused response. `reason` (`saml_*`) is for logs and metrics, never for the browser."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class IdpMetadata:
    entity_id: str
    sso_url: str
    certificates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceProvider:
    """This gateway as the SP of one tenant."""

    entity_id: str
    acs_url: str

    @classmethod
    def for_tenant(cls, public_url: str, slug: str) -> ServiceProvider:
        base = public_url.rstrip("/") + f"/auth/saml/{quote(slug, safe='')}"
        return cls(entity_id=f"{base}/metadata", acs_url=f"{base}/acs")


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """A tenant's IdP and attribute names, as kept in `SsoConnection.entity_id` and `.config`."""

    entity_id: str
    sso_url: str
    certificates: tuple[str, ...]
    email_attribute: str = "email"
    name_attribute: str = "name"
    groups_attribute: str = "groups"

    @classmethod
    def from_connection(cls, entity_id: str | None, config: Mapping[str, Any]) -> IdentityProvider:
        if not entity_id or not config.get("sso_url") or not config.get("certificates"):
            raise SamlFailure("saml_connection_incomplete")
        return cls(
            entity_id=entity_id,
            sso_url=str(config["sso_url"]),
            certificates=tuple(str(c) for c in config["certificates"]),
            email_attribute=str(config.get("email_attribute") or "email"),
            name_attribute=str(config.get("name_attribute") or "name"),
            groups_attribute=str(config.get("groups_attribute") or "groups"),
        )


def parse_idp_metadata(xml: str) -> IdpMetadata:
    """The IdP's entity id, HTTP-Redirect SSO URL and signing certificates from its metadata.

    The parser refuses DTDs and entities (python3-saml's `to_etree`), so pasted metadata can neither
    read files nor reach the network."""
    if len(xml.encode()) > MAX_METADATA_BYTES:
        raise SamlMetadataError(f"the metadata is larger than {MAX_METADATA_BYTES // 1024} KiB")
    try:
        data = OneLogin_Saml2_IdPMetadataParser.parse(xml)
    except Exception:
        raise SamlMetadataError("the metadata is not well-formed XML without a DTD") from None
    idp = data.get("idp") or {}
    entity_id, sso = idp.get("entityId"), (idp.get("singleSignOnService") or {}).get("url")
    if not entity_id:
        raise SamlMetadataError("the metadata has no EntityDescriptor with an IDPSSODescriptor")
    if not sso:
        raise SamlMetadataError("the metadata has no SingleSignOnService with the HTTP-Redirect binding")
    if urlsplit(sso).scheme not in ("https", "http"):
        raise SamlMetadataError("the SingleSignOnService location is not an http(s) URL")
    certs = idp.get("x509certMulti", {}).get("signing") or ([idp["x509cert"]] if idp.get("x509cert") else [])
    certs = list(dict.fromkeys(c.strip() for c in certs if c and c.strip()))
    if not certs:
        raise SamlMetadataError("the metadata has no signing certificate")
    if len(certs) > MAX_CERTIFICATES:
        raise SamlMetadataError(f"the metadata has more than {MAX_CERTIFICATES} signing certificates")
    for cert in certs:
        _check_certificate(cert)
    return IdpMetadata(entity_id=entity_id, sso_url=sso, certificates=tuple(certs))


def _check_certificate(cert: str) -> None:
    from cryptography import x509

    try:
        x509.load_der_x509_certificate(base64.b64decode("".join(cert.split()), validate=True))
    except (ValueError, binascii.Error):
        raise SamlMetadataError("a signing certificate in the metadata cannot be read") from None


def _settings(sp: ServiceProvider, idp: IdentityProvider) -> OneLogin_Saml2_Settings:
    certs = list(idp.certificates)
    return OneLogin_Saml2_Settings(
        {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": sp.entity_id,
                "assertionConsumerService": {"url": sp.acs_url, "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST},
                "NameIDFormat": NAMEID_FORMAT,
            },
            "idp": {
                "entityId": idp.entity_id,
                "singleSignOnService": {"url": idp.sso_url, "binding": OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT},
                # the certificates themselves, never a fingerprint (python3-saml's README: collisions)
                "x509certMulti": {"signing": certs},
            },
            "security": {
                "authnRequestsSigned": False,
                "wantAssertionsSigned": True,
                "wantMessagesSigned": False,
                "wantNameId": True,
                "wantAttributeStatement": False,
                "rejectDeprecatedAlgorithm": True,
                "allowRepeatAttributeName": False,
                "requestedAuthnContext": False,
                "signatureAlgorithm": OneLogin_Saml2_Constants.RSA_SHA256,
                "digestAlgorithm": OneLogin_Saml2_Constants.SHA256,
            },
        },
        sp_validation_only=True,
    )


def sp_metadata(sp: ServiceProvider) -> str:
    """The SP metadata XML an administrator gives the IdP."""
    settings = OneLogin_Saml2_Settings(
        {
            "strict": True,
            "sp": {
                "entityId": sp.entity_id,
                "assertionConsumerService": {"url": sp.acs_url, "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST},
                "NameIDFormat": NAMEID_FORMAT,
            },
            "security": {"wantAssertionsSigned": True, "authnRequestsSigned": False},
        },
        sp_validation_only=True,
    )
    metadata = settings.get_sp_metadata()
    return metadata.decode() if isinstance(metadata, bytes) else str(metadata)


def authn_request(sp: ServiceProvider, idp: IdentityProvider) -> tuple[str, str]:
    """A new AuthnRequest for the HTTP-Redirect binding: (its id, the URL to send the browser to).

    No RelayState goes out: where to return after login is kept with the pending request."""
    request = OneLogin_Saml2_Authn_Request(_settings(sp, idp))
    separator = "&" if "?" in idp.sso_url else "?"
    url = f"{idp.sso_url}{separator}SAMLRequest={quote(request.get_request(), safe='')}"
    return str(request.get_id()), url


class ReplayCache(Protocol):
    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        """Record `key`; False if it was already recorded and has not expired."""


class LocalReplayCache:
    """One process's replay cache (embedded mode)."""

    def __init__(self, clock: Any = time.monotonic, max_entries: int = 100_000) -> None:
        self._seen: dict[str, float] = {}
        self._clock = clock
        self._max = max_entries

    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        now = self._clock()
        if len(self._seen) >= self._max:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return False
        self._seen[key] = now + ttl_seconds
        return True


class RedisReplayCache:
    """Shared by every gateway process: `SET NX` with the assertion's remaining lifetime."""

    def __init__(self, redis: Any, prefix: str = "saml:seen:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def first_use(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, ex=max(1, ttl_seconds)))


def _request_data(acs_url: str, form: Mapping[str, str]) -> dict[str, Any]:
    parts = urlsplit(acs_url)
    return {
        "https": "on" if parts.scheme == "https" else "off",
        "http_host": parts.netloc,
        "script_name": parts.path,
        "get_data": {},
        "post_data": dict(form),
    }


def _replay_key(issuer: str, value: str) -> str:
    return hashlib.sha256(f"{issuer}\x00{value}".encode()).hexdigest()


async def validate_response(
    sp: ServiceProvider,
    idp: IdentityProvider,
    saml_response: str,
    *,
    request_id: str,
    replay: ReplayCache,
) -> ExternalIdentity:
    """The identity a SAMLResponse (base64, HTTP-POST binding) asserts, or `SamlFailure`."""
    if len(saml_response) > MAX_RESPONSE_BYTES:
        raise SamlFailure("saml_response_too_large")
    if not request_id:
        raise SamlFailure("saml_no_pending_request")
    try:
        response = OneLogin_Saml2_Response(_settings(sp, idp), saml_response)
        response.is_valid(
            _request_data(sp.acs_url, {"SAMLResponse": saml_response}), request_id=request_id, raise_exceptions=True
        )
    except OneLogin_Saml2_ValidationError as exc:
        raise SamlFailure("saml_invalid", _code_name(OneLogin_Saml2_ValidationError, exc.code)) from None
    except OneLogin_Saml2_Error as exc:
        raise SamlFailure("saml_invalid", _code_name(OneLogin_Saml2_Error, exc.code)) from None
    except Exception as exc:
        # malformed base64 or XML, a DTD or an entity (refused by the parser), wrong schema
        raise SamlFailure("saml_malformed", type(exc).__name__) from None

    # 1. InResponseTo present and equal to the request this browser started
    if response.get_in_response_to() != request_id:
        raise SamlFailure("saml_in_response_to")
    # 2. Destination present and exactly the ACS URL
    if response.document.get("Destination") != sp.acs_url:
        raise SamlFailure("saml_destination")
    # 3. an AudienceRestriction, naming exactly this SP
    audiences = response.get_audiences()
    if not audiences or any(a != sp.entity_id for a in audiences):
        raise SamlFailure("saml_audience")
    # 4. every bearer SubjectConfirmationData: Recipient exactly the ACS URL, InResponseTo ours
    # (`is_valid` has made sure the document, decrypted, holds exactly one assertion: the one its signature covers)
    confirmations = OneLogin_Saml2_XML.query(
        response.get_xml_document(), "/samlp:Response/saml:Assertion/saml:Subject/saml:SubjectConfirmation"
    )
    bearer = [c for c in confirmations if c.get("Method") == OneLogin_Saml2_Constants.CM_BEARER]
    if not bearer:
        raise SamlFailure("saml_subject_confirmation")
    for confirmation in bearer:
        data = confirmation.find("saml:SubjectConfirmationData", namespaces=OneLogin_Saml2_Constants.NSMAP)
        if data is None or data.get("Recipient") != sp.acs_url or data.get("InResponseTo") != request_id:
            raise SamlFailure("saml_recipient")

    issuer = idp.entity_id
    assertion_id = response.get_assertion_id()
    if not assertion_id:
        raise SamlFailure("saml_invalid", "MISSING_ID")
    not_on_or_after = response.get_assertion_not_on_or_after() or (OneLogin_Saml2_Utils.now() + 300)
    ttl = max(1, int(not_on_or_after - OneLogin_Saml2_Utils.now()) + CLOCK_DRIFT_SECONDS)
    # 5. each assertion, and each AuthnRequest, is consumed once
    if not await replay.first_use(_replay_key(issuer, "assertion:" + assertion_id), ttl):
        raise SamlFailure("saml_replay")
    if not await replay.first_use(_replay_key(issuer, "request:" + request_id), ttl):
        raise SamlFailure("saml_replay")

    try:
        subject = response.get_nameid()
        nameid_format = response.get_nameid_format()
        attributes: dict[str, list[str]] = response.get_attributes()
    except OneLogin_Saml2_ValidationError as exc:
        raise SamlFailure("saml_invalid", _code_name(OneLogin_Saml2_ValidationError, exc.code)) from None
    if not subject or not subject.strip():
        raise SamlFailure("saml_invalid", "EMPTY_NAMEID")

    friendly: dict[str, list[str]] = response.get_friendlyname_attributes()

    def values(name: str) -> list[str]:
        return attributes.get(name) or friendly.get(name) or []

    email = _first(values(idp.email_attribute))
    if email is None and nameid_format == EMAIL_NAMEID_FORMAT:
        email = subject
    name = _first(values(idp.name_attribute)) or _first(values("displayName"))
    groups = tuple(dict.fromkeys(g for g in values(idp.groups_attribute) if g))
    return ExternalIdentity(
        protocol="saml",
        issuer=issuer,
        subject=subject,
        email=email.strip().lower() if email else None,
        # the tenant's own IdP vouches for the address it asserts in a signed assertion
        email_verified=email is not None,
        name=name,
        groups=groups,
        second_factor=any(c in MFA_AUTHN_CONTEXTS for c in response.get_authn_contexts() or ()),
    )


def _first(values: Iterable[str] | None) -> str | None:
    for value in values or ():
        if value and value.strip():
            return value.strip()
    return None


def _code_name(kind: type, code: int) -> str:
    for name, value in vars(kind).items():
        if name.isupper() and value == code:
            return name
    return str(code)


# -- the pending AuthnRequest, bound to the browser that started it ---------------------------------


@dataclass(frozen=True, slots=True)
class PendingRequest:
    request_id: str
    organization_id: str
    connection_id: str
    return_to: str
    expires_at: int
    # the account whose holder asked to link this provider (resolvers/sso_login.py `start_sso_link`)
    link_user_id: str | None = None


def seal_pending(pending: PendingRequest, key: bytes) -> str:
    """The pending request as a cookie value: JSON, base64url, then an HMAC-SHA256 tag."""
    body = base64.urlsafe_b64encode(
        json.dumps(
            [
                pending.request_id,
                pending.organization_id,
                pending.connection_id,
                pending.return_to,
                pending.expires_at,
                pending.link_user_id,
            ],
            separators=(",", ":"),
        ).encode()
    ).rstrip(b"=")
    tag = base64.urlsafe_b64encode(hmac.digest(key, body, "sha256")).rstrip(b"=")
    return (body + b"." + tag).decode()


def open_pending(value: str | None, key: bytes, *, now: float | None = None) -> PendingRequest | None:
    """The pending request a cookie carries, if its tag is ours and it has not expired."""
    if not value or len(value) > 2048 or value.count(".") != 1:
        return None
    body, tag = value.encode().split(b".")
    expected = base64.urlsafe_b64encode(hmac.digest(key, body, "sha256")).rstrip(b"=")
    if not hmac.compare_digest(tag, expected):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        link = fields[5] if len(fields) > 5 else None
        pending = PendingRequest(
            str(fields[0]), str(fields[1]), str(fields[2]), str(fields[3]), int(fields[4]), str(link) if link else None
        )
    except (ValueError, IndexError, TypeError):
        return None
    return pending if pending.expires_at > (time.time() if now is None else now) else None


def pending_key(cookie_secret: str) -> bytes:
    return hmac.digest(cookie_secret.encode(), b"portcullis saml pending request", "sha256")
