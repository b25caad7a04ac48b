"""Creating tenants and their first owner (the `bootstrap` and `seed-demo` commands)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from authz import BuiltinRole
from authz.errors import BadUserInput, Conflict
from authz.plans import PLANS
from identity.lockout import email_key
from store.models import Membership, Organization, User

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"[^@\s\x00]{1,64}@[^@\s\x00]{1,255}")
MAX_EMAIL_LENGTH = 320


def checked_email(email: str, field: str = "email") -> str:
    """The address, trimmed; BAD_USER_INPUT when it is not one."""
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL.fullmatch(email):
        raise BadUserInput("not a valid email address", field=field)
    return email


@dataclass(frozen=True, slots=True)
class Provisioned:
    organization: Organization
    owner: User
    user_created: bool


def validate_tenant(slug: str, name: str, plan: str, email: str) -> None:
    if not SLUG.match(slug):
        raise BadUserInput("slug must be 1-63 lowercase letters, digits or hyphens", field="slug")
    if not name.strip() or len(name) > 200:
        raise BadUserInput("name must be 1-200 characters", field="name")
    if plan not in PLANS:
        raise BadUserInput(f"plan must be one of {', '.join(PLANS)}", field="plan")
    checked_email(email)


async def create_tenant(
    db: AsyncSession, *, slug: str, name: str, plan: str, owner_email: str, password_hash: str | None,
) -> Provisioned:
    validate_tenant(slug, name, plan, owner_email)
    if (await db.execute(select(col(Organization.id)).where(col(Organization.slug) == slug))).first():
        raise Conflict(f"an organization with the slug {slug!r} already exists")
    org = Organization(slug=slug, name=name.strip(), plan=plan)
    db.add(org)
    user = (await db.execute(select(User).where(col(User.email_key) == email_key(owner_email)))).scalar_one_or_none()
    created = user is None
    if user is None:
        user = User(email=owner_email.strip(), email_key=email_key(owner_email), password_hash=password_hash)
        db.add(user)
    await db.flush()
    db.add(Membership(organization_id=org.id, user_id=user.id, role=BuiltinRole.OWNER.value))
    await db.flush()
    return Provisioned(organization=org, owner=user, user_created=created)
