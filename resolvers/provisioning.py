"""Creating tenants and their first owner (the `bootstrap` and `seed-demo` commands).

A new address gets a new account, owner of the new organization, with the operator's one-time password.
An address that already has an account is never attached by the operator's say: the organization is
created without a member and the account is *invited* as its owner (resolvers/invitations.py); it becomes
the owner only when its holder accepts (C-124).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import BuiltinRole
from authz.errors import BadUserInput, Conflict
from authz.plans import PLANS
from identity.lockout import email_key
from identity.tokens import hash_opaque_token
from store.models import Invitation, Membership, Organization, User, utcnow

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"[^@\s\x00]{1,64}@[^@\s\x00]{1,255}")
MAX_EMAIL_LENGTH = 320
INVITATION_PREFIX = "pti_"
INVITATION_TTL = timedelta(days=7)


def new_invitation_token() -> str:
    return INVITATION_PREFIX + secrets.token_urlsafe(32)


def checked_email(email: str, field: str = "email") -> str:
    """The address, trimmed; BAD_USER_INPUT when it is not one."""
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL.fullmatch(email):
        raise BadUserInput("not a valid email address", field=field)
    return email


@dataclass(frozen=True, slots=True)
class Provisioned:
    organization: Organization
    owner: User | None  # None: the address has an account, invited as the owner
    user_created: bool
    invitation: Invitation | None = None
    invitation_token: str | None = None
    invitation_url: str | None = None  # the emailed link, for the operator who runs `portcullis bootstrap`


def validate_tenant(slug: str, name: str, plan: str, email: str) -> None:
    if not SLUG.match(slug):
        raise BadUserInput("slug must be 1-63 lowercase letters, digits or hyphens", field="slug")
    if not name.strip() or len(name) > 200:
        raise BadUserInput("name must be 1-200 characters", field="name")
    if plan not in PLANS:
        raise BadUserInput(f"plan must be one of {', '.join(PLANS)}", field="plan")
    checked_email(email)


async def create_tenant(
    db: AsyncSession,
    *,
    slug: str,
    name: str,
    plan: str,
    owner_email: str,
    password_hash: str | None,
    now: datetime | None = None,
) -> Provisioned:
    validate_tenant(slug, name, plan, owner_email)
    if (await db.execute(select(col(Organization.id)).where(col(Organization.slug) == slug))).first():
        raise Conflict(f"an organization with the slug {slug!r} already exists")
    at = now or utcnow()
    org = Organization(slug=slug, name=name.strip(), plan=plan, created_at=at)
    db.add(org)
    key = email_key(owner_email)
    user = (await db.execute(select(User).where(col(User.email_key) == key))).scalar_one_or_none()
    if user is not None:
        await db.flush()
        token = new_invitation_token()
        invitation = Invitation(
            organization_id=org.id,
            email=user.email,
            email_key=key,
            role=BuiltinRole.OWNER.value,
            token_hash=hash_opaque_token(token),
            created_at=at,
            expires_at=at + INVITATION_TTL,
            sent_at=at,
            send_count=1,
        )
        db.add(invitation)
        await db.flush()
        return Provisioned(
            organization=org, owner=None, user_created=False, invitation=invitation, invitation_token=token
        )
    user = User(
        email=owner_email.strip(),
        email_key=key,
        password_hash=password_hash,
        password_changed_at=at if password_hash else None,
        created_at=at,
    )
    db.add(user)
    await db.flush()
    db.add(Membership(organization_id=org.id, user_id=user.id, role=BuiltinRole.OWNER.value, created_at=at))
    await db.flush()
    return Provisioned(organization=org, owner=user, user_created=True)
