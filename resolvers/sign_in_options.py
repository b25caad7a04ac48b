"""What an organization's sign-in page may offer, asked before anyone signs in (`signInOptions`).

A front end shows the password form, the single sign-on button, or both, by what the organization's
security policy allows and whether it has an enabled SSO connection. The answer says nothing that signing in
would not: an organization that does not exist answers as one with the default policy and no connection
(password only), and the SSO start address answers for any slug alike (`GET /auth/sso/<slug>` starts the
organization's sign-in, or says that it has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select

from authz.errors import BadUserInput
from authz.security_policy import SignInMethod
from identity.security_policies import load_policy
from resolvers.deps import RequestContext
from resolvers.provisioning import SLUG
from store.models import Organization, SsoConnection
from store.scoping import tenant_select


@dataclass(frozen=True)
class SignInOptions:
    organization: str
    password: bool
    sso_kind: str | None  # "oidc" or "saml": the enabled connection the SSO start uses (OIDC first)
    sso_url: str | None


async def sign_in_options(ctx: RequestContext, slug: str) -> SignInOptions:
    if not SLUG.match(slug):
        raise BadUserInput("organization: an organization's slug is 1 to 63 lower-case letters, digits and dashes.")
    db = await ctx.db()
    org = (await db.execute(select(Organization).where(col(Organization.slug) == slug))).scalar_one_or_none()
    if org is None:
        return SignInOptions(slug, password=True, sso_kind=None, sso_url=None)
    policy = await load_policy(db, org.id)
    kind = None
    if SignInMethod.SSO in policy.allowed_sign_in_methods:
        connection = (
            await db.execute(
                tenant_select(SsoConnection, org.id)
                .where(col(SsoConnection.enabled).is_(True))
                .order_by(col(SsoConnection.kind).desc(), col(SsoConnection.created_at))  # as the SSO start
                .limit(1)
            )
        ).scalar_one_or_none()
        kind = connection.kind if connection is not None else None
    url = f"{ctx.services.public_url.rstrip('/')}/auth/sso/{slug}" if kind is not None else None
    return SignInOptions(slug, SignInMethod.PASSWORD in policy.allowed_sign_in_methods, kind, url)
