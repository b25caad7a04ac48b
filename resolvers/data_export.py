"""The right of access: `exportMyData` (a download link, also mailed) and `portcullis data export`.

The export is built from the registry (resolvers/personal_data.py): for each table, the person's rows and the
columns the registry names (never a secret or a hash), audit entries through their readable view. It is kept
encrypted (SecretBox, purpose "export") for `EXPORT_TTL`, downloadable only by the person it is about
(`GET /exports/{id}.json`, with the person's own credential); after that the link answers 404. One export per
person per `EXPORT_INTERVAL`: another within it is RATE_LIMITED (429, `retryAfter`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import PrincipalKind
from authz.errors import ErrorCode, Forbidden, GatewayError, NotFound
from identity.secrets import SecretBox
from resolvers.deps import RequestContext
from resolvers.erasure import is_erased, subject_of
from resolvers.mail import send_mail
from resolvers.personal_data import REGISTRY
from store.audit import AuditAction, iso, readable_entries
from store.models import AuditEntry, User
from store.privacy import DataExport

EXPORT_TTL = timedelta(hours=24)
EXPORT_INTERVAL = timedelta(minutes=1)
FORMAT = "portcullis-data-export/1"


@dataclass(frozen=True)
class ExportLink:
    export: DataExport
    url: str


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


async def collect(db: AsyncSession, user: User, now: datetime) -> dict[str, Any]:
    """Everything the registry finds about `user`, as one JSON document."""
    subject = await subject_of(db, user)
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in REGISTRY:
        if entry.rows is None or not entry.export:
            continue
        stmt = select(entry.model).where(entry.rows(subject))
        if entry.model is AuditEntry:
            found = list((await db.execute(stmt.order_by(col(AuditEntry.at), col(AuditEntry.id)))).scalars().all())
            rows: list[Any] = await readable_entries(db, cast(list[AuditEntry], found))
        else:
            rows = list((await db.execute(stmt)).scalars().all())
        tables[entry.table] = [{name: _plain(getattr(r, name)) for name in entry.export} for r in rows]
    return {
        "format": FORMAT,
        "generatedAt": iso(now),
        "subject": {"userId": user.id, "email": user.email},
        "tables": tables,
    }


def _box(ctx: RequestContext) -> SecretBox:
    box = ctx.services.secrets
    if box is None:
        raise GatewayError("Exports need the data encryption key.")
    return box


async def _user(db: AsyncSession, user_id: str) -> User:
    user = (await db.execute(select(User).where(col(User.id) == user_id).with_for_update())).scalars().first()
    if user is None or is_erased(user):
        raise NotFound("No such account.")
    return user


async def export_my_data(ctx: RequestContext) -> ExportLink:
    """`exportMyData`: the caller's export, its link mailed to the account's address."""
    p = ctx.principal
    if p.kind is not PrincipalKind.USER or p.subject_id is None:
        raise Forbidden("Only a signed-in person can export their own data.")
    db = await ctx.db()
    user = await _user(db, p.subject_id)  # locked: two requests at once do not both pass the interval
    now = ctx.services.now()
    last = (
        await db.execute(
            select(col(DataExport.created_at))
            .where(col(DataExport.user_id) == user.id)
            .order_by(col(DataExport.created_at).desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if last is not None and now - last < EXPORT_INTERVAL:
        retry = max(1, math.ceil((last + EXPORT_INTERVAL - now).total_seconds()))
        response = ctx.response
        if response is not None:
            response.status_code = 429
            response.headers["retry-after"] = str(retry)
        raise GatewayError(
            f"An export was made less than a minute ago; retry in {retry} s.",
            code=ErrorCode.RATE_LIMITED,
            retryAfter=retry,
        )
    document = json.dumps(await collect(db, user, now), sort_keys=True, separators=(",", ":"))
    row = DataExport(
        user_id=user.id,
        created_at=now,
        expires_at=now + EXPORT_TTL,
        digest=hashlib.sha256(document.encode()).hexdigest(),
        content_encrypted=_box(ctx).encrypt(document),
    )
    db.add(row)
    await db.flush()
    url = f"{ctx.services.public_url.rstrip('/')}/exports/{row.id}.json"
    await send_mail(
        ctx, to=user.email, template="data_export_ready", variables={"download_url": url, "expires_at": row.expires_at}
    )
    ctx.audit(
        AuditAction.DATA_EXPORTED,
        resource_type="data_export",
        resource_id=row.id,
        details={"delivery": "download", "expiresAt": row.expires_at},
    )
    return ExportLink(row, url)


async def export_for_operator(ctx: RequestContext, email: str) -> dict[str, Any]:
    """`portcullis data export --email`: the document itself, for a subject access request (audited)."""
    db = await ctx.db()
    user = (await db.execute(select(User).where(col(User.email_key) == email.strip().casefold()))).scalars().first()
    if user is None or is_erased(user):
        raise NotFound("No account has this address.")
    document = await collect(db, user, ctx.services.now())
    ctx.audit(AuditAction.DATA_EXPORTED, resource_type="user", resource_id=user.id, details={"delivery": "operator"})
    return document


async def read_export(ctx: RequestContext, export_id: str) -> tuple[DataExport, str]:
    """The export for its download: only to the person it is about, only until it expires (else NOT_FOUND,
    as for an id that does not exist)."""
    p = ctx.principal
    db = await ctx.db()
    row = None
    if p.kind is PrincipalKind.USER and p.subject_id is not None and len(export_id) <= 36:
        row = (await db.execute(select(DataExport).where(col(DataExport.id) == export_id))).scalars().first()
    if row is None or row.user_id != p.subject_id or row.expires_at <= ctx.services.now():
        raise NotFound("No such export, or it has expired.")
    ctx.audit(AuditAction.DATA_EXPORT_DOWNLOADED, resource_type="data_export", resource_id=row.id)
    return row, _box(ctx).decrypt(row.content_encrypted)
