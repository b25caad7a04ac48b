"""The ACCESS report: the organization's roles, members and API keys as they stand when the report is made,
and the members without MFA (docs/reports.md)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BUILTIN_ROLE_PERMISSIONS, BuiltinRole, resolve_permissions
from identity.sessions import load_custom_roles
from resolvers.report_builders import (
    DORMANT_DAYS,
    Period,
    Writer,
    age_days,
    chart,
    iso,
    iso_or_none,
    key_status,
    keyset,
    percent,
)
from store.models import ApiKey, Membership, Organization, User
from store.scoping import tenant_filter


def _member_status(last_login: datetime | None, member_since: datetime, now: datetime) -> str:
    if last_login is None:
        return "never_signed_in" if now - member_since > timedelta(days=DORMANT_DAYS) else "invited"
    return "dormant" if now - last_login > timedelta(days=DORMANT_DAYS) else "active"


async def build_access(db: AsyncSession, org: Organization, period: Period, out: Writer) -> dict[str, Any]:
    now = period.now
    custom = await load_custom_roles(db, org.id)
    holders = dict(
        (
            await db.execute(
                sa_select(col(Membership.role), func.count())
                .where(tenant_filter(Membership, org.id))
                .group_by(col(Membership.role))
            )
        ).all()
    )
    builtin = [r.value for r in BuiltinRole]
    role_names = [*builtin, *sorted(set(custom) - set(builtin))]
    permissions = {r: " ".join(sorted(str(p) for p in resolve_permissions(r, custom))) for r in role_names}
    for role in role_names:
        await out.add(
            "role",
            "role",
            role,
            role,
            role,
            permissions[role],
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            "built_in" if role in BUILTIN_ROLE_PERMISSIONS else "custom",
            int(holders.get(role, 0)),
        )
    keys = [col(Membership.created_at), col(Membership.id)]
    stmt = (
        sa_select(
            *keys, col(User.id), col(User.email), col(Membership.role), col(User.mfa_enabled), col(User.last_login_at)
        )
        .join(User, col(User.id) == col(Membership.user_id))
        .where(tenant_filter(Membership, org.id))
    )
    statuses = Counter[str]()
    members = with_mfa = 0
    async for since, _mid, user_id, email, role, mfa, last_login in keyset(db, stmt, keys):
        members += 1
        with_mfa += bool(mfa)
        status = _member_status(last_login, since, now)
        statuses[status] += 1
        granted = permissions.get(role) or " ".join(sorted(str(p) for p in resolve_permissions(role, custom)))
        await out.add(
            "member",
            "user",
            user_id,
            email,
            role,
            granted,
            None,
            bool(mfa),
            iso_or_none(last_login),
            iso(since),
            age_days(since, now),
            None,
            None,
            status,
            None,
        )
    key_statuses = Counter[str]()
    kkeys = [col(ApiKey.created_at), col(ApiKey.id)]
    async for _created, _kid, key in keyset(db, sa_select(*kkeys, ApiKey).where(tenant_filter(ApiKey, org.id)), kkeys):
        status = key_status(key, now)
        key_statuses[status] += 1
        await out.add(
            "api_key",
            "api_key",
            key.id,
            key.name,
            None,
            None,
            " ".join(sorted(key.scopes)),
            None,
            None,
            iso(key.created_at),
            age_days(key.created_at, now),
            iso_or_none(key.last_used_at),
            iso_or_none(key.revoked_at),
            status,
            None,
        )
    stmt = stmt.where(col(User.mfa_enabled).is_(False))
    async for since, _mid, user_id, email, role, _mfa, last_login in keyset(db, stmt, keys):
        await out.add(
            "member_without_mfa",
            "user",
            user_id,
            email,
            role,
            None,
            None,
            False,
            iso_or_none(last_login),
            iso(since),
            age_days(since, now),
            None,
            None,
            _member_status(last_login, since, now),
            None,
        )
    return {
        "members": members,
        "membersWithMfa": with_mfa,
        "membersWithoutMfa": members - with_mfa,
        "mfaCoveragePercent": percent(with_mfa, members),
        "memberStatus": dict(sorted(statuses.items())),
        "apiKeys": dict(sorted(key_statuses.items())),
        "roles": {r: int(holders.get(r, 0)) for r in role_names},
        "chart": chart(
            "Members by role",
            "members",
            [{"label": r, "value": int(holders.get(r, 0)), "tone": "normal"} for r in role_names],
            axis="Role",
        ),
    }
