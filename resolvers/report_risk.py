"""The SECURITY report's sign-in risk (docs/risk.md, docs/reports.md): the period's sign-in attempts by risk
level, the high-risk ones with their signals, and the refusals by level, from the `sign_ins` rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.risk import HIGH_FROM, MEDIUM_FROM
from authz.security_policy import RiskLevel
from identity.risk import REFUSED
from resolvers.report_builders import Period, Writer, iso, keyset
from store.security import SignIn

HIGH_RISK_IN_SUMMARY = 20


def _in_period(org_id: str, period: Period) -> ColumnElement[bool]:
    return and_(
        col(SignIn.organization_id) == org_id,
        col(SignIn.at) >= period.start,
        col(SignIn.at) < period.end,
    )


async def build_risk(db: AsyncSession, org_id: str, period: Period, out: Writer) -> dict[str, Any]:
    score = col(SignIn.risk_score)
    level = case(
        (score >= HIGH_FROM, RiskLevel.HIGH.value), (score >= MEDIUM_FROM, RiskLevel.MEDIUM.value), else_="low"
    ).label("level")
    counts = (
        await db.execute(
            sa_select(level, col(SignIn.outcome), func.count())
            .where(_in_period(org_id, period))
            .group_by(level, col(SignIn.outcome))
        )
    ).all()
    by_level = {lv.value: 0 for lv in RiskLevel}
    refused = {lv.value: 0 for lv in RiskLevel}
    for name, outcome, n in counts:
        by_level[name] += n
        if outcome == REFUSED:
            refused[name] += n
    for name in by_level:
        await out.add("risk_level", None, None, name, None, None, None, None, None, None, None, by_level[name])
        await out.add("risk_refused", None, None, name, None, None, None, None, None, None, None, refused[name])
    keys = [col(SignIn.at), col(SignIn.id)]
    stmt = sa_select(
        *keys,
        col(SignIn.method),
        col(SignIn.outcome),
        col(SignIn.user_id),
        col(SignIn.client_ip),
        score,
        col(SignIn.risk_signals),
    ).where(_in_period(org_id, period), score >= HIGH_FROM)
    high: list[dict[str, Any]] = []
    async for at, _id, method, outcome, user_id, ip, value, signals in keyset(db, stmt, keys):
        names = [str(s) for s in signals or []]
        await out.add(
            "risk_sign_in",
            iso(at),
            at.date().isoformat(),
            RiskLevel.HIGH.value,
            method,
            outcome,
            "user",
            user_id,
            ip,
            "signals",
            ",".join(names),
            value,
        )
        if len(high) < HIGH_RISK_IN_SUMMARY:
            high.append(
                {
                    "at": iso(at),
                    "userId": user_id,
                    "ip": ip,
                    "method": method,
                    "outcome": outcome,
                    "score": value,
                    "signals": names,
                }
            )
    return {
        "signInsByLevel": by_level,
        "refusedByLevel": refused,
        "refused": sum(refused.values()),
        "highRisk": high,
    }
