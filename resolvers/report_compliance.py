"""The COMPLIANCE report: access review, MFA coverage, dormant accounts, key rotation age, the security
policy's password, session, MFA and network settings, and the audit chain, each checked against its SOC 2
and ISO/IEC 27001 controls (`CONTROLS`) with its evidence rows (docs/reports.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from identity.security_policies import load_policy
from resolvers.audit import attested_starts
from resolvers.report_builders import (
    ACCESS_REVIEW_DAYS,
    CONTROLS,
    DORMANT_DAYS,
    KEY_ROTATION_DAYS,
    Period,
    Writer,
    age_days,
    chart,
    iso,
    key_status,
)
from resolvers.report_policy import policy_checks
from store.audit import verify
from store.models import ApiKey, AuditEntry, Membership, Organization, Report, User
from store.scoping import tenant_filter, tenant_select


def controls_text(check: str) -> str:
    soc2, iso27001 = CONTROLS[check]
    return "; ".join([*(f"SOC 2 {c}" for c in soc2), *(f"ISO 27001 {c}" for c in iso27001)])


@dataclass
class Evidence:
    subject_type: str
    subject_id: str
    name: str | None
    detail: str


async def _check(
    out: Writer, results: list[dict[str, Any]], check: str, passed: bool, detail: str, evidence: list[Evidence]
) -> None:
    status = "pass" if passed else "attention"
    await out.add("check", check, controls_text(check), status, None, None, None, detail)
    for e in evidence:
        await out.add("evidence", check, controls_text(check), status, e.subject_type, e.subject_id, e.name, e.detail)
    soc2, iso27001 = CONTROLS[check]
    results.append(
        {
            "check": check,
            "status": status,
            "soc2": list(soc2),
            "iso27001": list(iso27001),
            "detail": detail,
            "evidence": len(evidence),
        }
    )


async def _last_rotations(db: AsyncSession, org_id: str) -> dict[str, datetime]:
    rows = await db.execute(
        sa_select(col(AuditEntry.resource_id), func.max(col(AuditEntry.at)))
        .where(
            col(AuditEntry.chain) == org_id,
            col(AuditEntry.action) == "apikey_rotated",
            col(AuditEntry.result) == "success",
            col(AuditEntry.resource_id).is_not(None),
        )
        .group_by(col(AuditEntry.resource_id))
    )
    return {str(k): at for k, at in rows.all()}


async def build_compliance(db: AsyncSession, org: Organization, period: Period, out: Writer) -> dict[str, Any]:
    now = period.now
    results: list[dict[str, Any]] = []
    since = now - timedelta(days=ACCESS_REVIEW_DAYS)
    reviews = (
        (
            await db.execute(
                tenant_select(Report, org.id)
                .where(col(Report.kind) == "ACCESS", col(Report.created_at) >= since, col(Report.created_at) < now)
                .order_by(col(Report.created_at).desc())
            )
        )
        .scalars()
        .all()
    )
    await _check(
        out,
        results,
        "access_review",
        bool(reviews),
        f"{len(reviews)} ACCESS report(s) in the last {ACCESS_REVIEW_DAYS} days",
        [
            Evidence(
                "report", r.id, iso(r.created_at), f"ACCESS review of {iso(r.period_start)} to {iso(r.period_end)}"
            )
            for r in reviews
        ],
    )

    members = (
        await db.execute(
            sa_select(
                col(User.id),
                col(User.email),
                col(Membership.role),
                col(User.mfa_enabled),
                col(User.last_login_at),
                col(Membership.created_at),
            )
            .join(User, col(User.id) == col(Membership.user_id))
            .where(tenant_filter(Membership, org.id))
            .order_by(col(User.email), col(User.id))
        )
    ).all()
    without = [m for m in members if not m.mfa_enabled]
    await _check(
        out,
        results,
        "mfa_coverage",
        not without,
        f"{len(members) - len(without)} of {len(members)} members use MFA"
        + ("; MFA is required for this organization" if org.require_mfa else ""),
        [Evidence("user", m.id, m.email, f"role {m.role}; no MFA") for m in without],
    )

    dormant = [
        Evidence(
            "user", m.id, m.email, f"last sign-in {iso(m.last_login_at)}" if m.last_login_at else "never signed in"
        )
        for m in members
        if now - (m.last_login_at or m.created_at) > timedelta(days=DORMANT_DAYS)
    ]
    keys = (
        (
            await db.execute(
                tenant_select(ApiKey, org.id)
                .where(col(ApiKey.revoked_at).is_(None))
                .order_by(col(ApiKey.created_at), col(ApiKey.id))
            )
        )
        .scalars()
        .all()
    )
    active = [k for k in keys if key_status(k, now) == "active"]
    dormant += [
        Evidence("api_key", k.id, k.name, f"last used {iso(k.last_used_at)}" if k.last_used_at else "never used")
        for k in active
        if now - (k.last_used_at or k.created_at) > timedelta(days=DORMANT_DAYS)
    ]
    await _check(
        out,
        results,
        "dormant_accounts",
        not dormant,
        f"{len(dormant)} member(s) or key(s) unused for over {DORMANT_DAYS} days",
        dormant,
    )

    rotated = await _last_rotations(db, org.id)
    stale = []
    for k in active:
        secret_since = max(k.created_at, rotated.get(k.id, k.created_at))
        if now - secret_since > timedelta(days=KEY_ROTATION_DAYS):
            stale.append(
                Evidence(
                    "api_key",
                    k.id,
                    k.name,
                    f"secret {age_days(secret_since, now)} days old (since {iso(secret_since)})",
                )
            )
    await _check(
        out,
        results,
        "key_rotation_age",
        not stale,
        f"{len(stale)} of {len(active)} active key(s) not rotated for over {KEY_ROTATION_DAYS} days",
        stale,
    )

    # the organization's security policy, setting by setting (resolvers/report_policy.py)
    for pc in policy_checks(await load_policy(db, org.id)):
        rows = [Evidence("security_policy", org.id, name, value) for name, value in pc.settings]
        await _check(out, results, pc.check, pc.passed, pc.detail, rows)

    ok, detail, evidence = await _audit_chain(db, org.id, period)
    await _check(out, results, "audit_chain", ok, detail, evidence)

    attention = [r["check"] for r in results if r["status"] == "attention"]
    return {
        "checks": results,
        "passed": len(results) - len(attention),
        "attention": attention,
        "chart": chart(
            "Evidence rows per check",
            "rows",
            [
                {
                    "label": f"{r['check'].replace('_', ' ')}: {r['status']}",
                    "value": r["evidence"],
                    "tone": "pass" if r["status"] == "pass" else "attention",
                }
                for r in results
            ],
            axis="Check",
        ),
    }


async def _audit_chain(db: AsyncSession, org_id: str, period: Period) -> tuple[bool, str, list[Evidence]]:
    """The organization's whole chain recomputed and compared with its head row (store.audit); a pruned
    chain from the start its signed checkpoint attests (docs/audit.md, "Retention")."""
    starts = await attested_starts(db, period.keys) if period.keys is not None else {}
    report = (await verify(db, chains=[org_id], starts=starts)).chains[org_id]
    if report.ok:
        return True, f"{report.checked} entries verified up to sequence {report.head_sequence}", []
    return (
        False,
        f"chain broken at sequence {report.first_broken_sequence}",
        [Evidence("audit_log", str(report.first_broken_sequence), None, problem) for problem in report.problems],
    )
