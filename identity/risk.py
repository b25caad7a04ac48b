"""The facts a sign-in's risk is scored from, read from the `sign_ins` rows of earlier attempts, and the row
each attempt that named an account leaves behind (docs/risk.md).

Two indexed reads per sign-in: the account's recent successful sign-ins (`ix_sign_ins_user_at`: addresses,
user agents and hours it used), and one round trip counting the account's recent failures
(`ix_sign_ins_user_at`) and the other accounts tried from the same address (`ix_sign_ins_ip_at`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz.risk import RiskAssessment, RiskFacts
from store.security import SignIn

# outcomes of a sign-in attempt
SUCCESS = "success"
FAILURE = "failure"  # a wrong password or second-factor code, a locked or inactive account
CHALLENGED = "challenged"  # the password was right; the second factor was asked for
REFUSED = "refused"  # refused for its risk

HISTORY_DAYS = 90
HISTORY_ROWS = 200
RECENT = timedelta(hours=1)


def user_agent_hash(user_agent: str | None) -> str | None:
    """sha256 of the user agent: enough to tell a new one, nothing to read back."""
    if not user_agent:
        return None
    return hashlib.sha256(user_agent.encode("utf-8", "surrogatepass")).hexdigest()


async def gather_facts(
    db: AsyncSession,
    *,
    user_id: str,
    client_ip: str | None,
    agent_hash: str | None,
    now: datetime,
    known_address: bool = False,
) -> RiskFacts:
    """The facts of a sign-in by `user_id` from `client_ip` now. `known_address`: another record (the login
    throttle's known addresses) says the account signed in from this address before."""
    history = (
        await db.execute(
            select(col(SignIn.client_ip), col(SignIn.user_agent_hash), col(SignIn.at))
            .where(
                col(SignIn.user_id) == user_id,
                col(SignIn.at) >= now - timedelta(days=HISTORY_DAYS),
                col(SignIn.outcome) == SUCCESS,
            )
            .order_by(col(SignIn.at).desc())
            .limit(HISTORY_ROWS)
        )
    ).all()
    since = now - RECENT
    failures = (
        select(func.count())
        .select_from(SignIn)
        .where(col(SignIn.user_id) == user_id, col(SignIn.at) >= since, col(SignIn.outcome) == FAILURE)
        .scalar_subquery()
    )
    others = (
        select(func.count(func.distinct(col(SignIn.user_id))))
        .where(col(SignIn.client_ip) == client_ip, col(SignIn.at) >= since, col(SignIn.user_id) != user_id)
        .scalar_subquery()
    )
    recent_failures, accounts = (await db.execute(select(failures, others))).one()
    addresses = {row[0] for row in history}
    agents = {row[1] for row in history}
    return RiskFacts(
        address_seen=client_ip is not None and (known_address or client_ip in addresses),
        user_agent_seen=agent_hash is not None and agent_hash in agents,
        recent_failures=int(recent_failures or 0),
        accounts_from_address=int(accounts or 0) if client_ip is not None else 0,
        hour=now.hour,
        usual_hours=tuple(row[2].hour for row in history),
    )


def sign_in_row(
    *,
    user_id: str,
    organization_id: str | None,
    method: str,
    outcome: str,
    client_ip: str | None,
    agent_hash: str | None,
    assessment: RiskAssessment,
    now: datetime,
) -> SignIn:
    return SignIn(
        organization_id=organization_id,
        user_id=user_id,
        method=method,
        outcome=outcome,
        client_ip=client_ip,
        user_agent_hash=agent_hash,
        risk_score=assessment.score,
        risk_signals=assessment.signal_names,
        at=now,
    )
