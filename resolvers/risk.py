"""Risk-based step-up at sign-in (docs/risk.md): each sign-in that names an account is scored
(`authz.risk`) from the facts of earlier ones (`identity.risk`), leaves a `sign_ins` row, and the
organization's policy (`SecurityPolicy.risk_action`) says what its level triggers:

- ALLOW: nothing more than today.
- REQUIRE_MFA: a password sign-in needs the account's second factor; an account without one signs in and
  a `high_risk_sign_in` event tells the organization (it cannot present a factor it never enrolled; the
  organization's `requireMfa` is what makes every member enroll). An SSO sign-in needs the IdP to say it
  did more than a password (OIDC `amr`, SAML `AuthnContextClassRef`); otherwise it is refused, since the
  organization configures its own IdP and can make it ask for and assert a second factor.
- REFUSE: the sign-in fails with the same answer as bad credentials, and a `high_risk_sign_in` event
  tells the organization's owners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from authz.risk import RiskAssessment, score
from authz.security_policy import DEFAULT_POLICY, RiskAction, RiskLevel
from identity.risk import CHALLENGED, FAILURE, REFUSED, SUCCESS, gather_facts, sign_in_row, user_agent_hash
from identity.security_events import SecurityEventKind, Severity, record_security_event
from identity.security_policies import load_policy
from resolvers.deps import RequestContext

__all__ = [
    "CHALLENGED",
    "FAILURE",
    "SUCCESS",
    "SignInRisk",
    "admit",
    "assess",
    "assess_in",
    "failed_attempt_in",
    "record_attempt",
    "refuse",
    "refuse_sso",
]

# no account has it (ids are UUIDs): the reads of a failure that names no account find nothing
NO_ACCOUNT = ""

_SEVERITY = {RiskLevel.LOW: Severity.LOW, RiskLevel.MEDIUM: Severity.MEDIUM, RiskLevel.HIGH: Severity.HIGH}


@dataclass(frozen=True, slots=True)
class SignInRisk:
    user_id: str
    organization_id: str | None
    method: str  # "password", "oidc" or "saml"
    client_ip: str | None
    agent_hash: str | None
    assessment: RiskAssessment
    action: RiskAction

    @property
    def refused(self) -> bool:
        return self.action is RiskAction.REFUSE

    @property
    def needs_second_factor(self) -> bool:
        return self.action is RiskAction.REQUIRE_MFA

    def details(self) -> dict[str, Any]:
        """`details.risk` of the sign-in's audit entry."""
        return {**self.assessment.as_details(), "action": self.action.value}

    def row(self, ctx: RequestContext, outcome: str) -> Any:
        return sign_in_row(
            user_id=self.user_id,
            organization_id=self.organization_id,
            method=self.method,
            outcome=outcome,
            client_ip=self.client_ip,
            agent_hash=self.agent_hash,
            assessment=self.assessment,
            now=ctx.services.now(),
        )


async def assess_in(
    db: AsyncSession,
    ctx: RequestContext,
    *,
    user_id: str,
    organization_id: str | None,
    method: str,
    known_address: bool = False,
) -> SignInRisk:
    """The sign-in's risk and what the organization's policy makes of it, read in `db`."""
    agent = user_agent_hash(ctx.user_agent)
    facts = await gather_facts(
        db,
        user_id=user_id,
        client_ip=ctx.principal.client_ip,
        agent_hash=agent,
        now=ctx.services.now(),
        known_address=known_address,
    )
    assessment = score(facts)
    policy = await load_policy(db, organization_id) if organization_id is not None else DEFAULT_POLICY
    return SignInRisk(
        user_id,
        organization_id,
        method,
        ctx.principal.client_ip,
        agent,
        assessment,
        policy.risk_action(assessment.level),
    )


async def assess(
    ctx: RequestContext, *, user_id: str, organization_id: str | None, method: str, known_address: bool = False
) -> SignInRisk:
    """`assess_in`, in a short read of its own."""
    async with ctx.services.db.transaction() as db:
        return await assess_in(
            db, ctx, user_id=user_id, organization_id=organization_id, method=method, known_address=known_address
        )


async def record_attempt(ctx: RequestContext, risk: SignInRisk, outcome: str) -> None:
    """The row of an attempt that did not sign in, committed on its own (the request fails)."""
    async with ctx.services.db.transaction() as db:
        db.add(risk.row(ctx, outcome))


async def failed_attempt_in(
    db: AsyncSession,
    ctx: RequestContext,
    *,
    user_id: str | None,
    organization_id: str | None,
    method: str,
    known_address: bool = False,
) -> dict[str, Any] | None:
    """Score a failed attempt in `db`; for an existing account, add its `sign_ins` row and answer its
    `details.risk`. With no account (None) the same reads run for an id no row holds and nothing is added:
    a failure costs the same round trips whether or not the email names an account (C-112)."""
    risk = await assess_in(
        db,
        ctx,
        user_id=user_id if user_id is not None else NO_ACCOUNT,
        organization_id=organization_id,
        method=method,
        known_address=known_address,
    )
    if user_id is None:
        return None
    db.add(risk.row(ctx, FAILURE))
    return risk.details()


async def _event(
    db: AsyncSession, ctx: RequestContext, risk: SignInRisk, summary: str, outcome: str, *, stored: bool = True
) -> None:
    """A `high_risk_sign_in` event; `stored`: the account exists (an SSO sign-in may have been about to
    create it)."""
    if risk.organization_id is None:
        return
    a = risk.assessment
    await record_security_event(
        db,
        organization_id=risk.organization_id,
        kind=SecurityEventKind.HIGH_RISK_SIGN_IN,
        severity=_SEVERITY[a.level],
        summary=f"{summary} (risk {a.score}, {a.level.value}: {', '.join(a.signal_names) or 'no signal'})",
        subject_id=risk.user_id if stored else None,
        client_ip=risk.client_ip,
        request_id=ctx.principal.request_id,
        details={"risk": risk.details(), "method": risk.method, "outcome": outcome},
    )


async def refuse(ctx: RequestContext, risk: SignInRisk, *, summary: str = "Sign-in refused for its risk") -> None:
    """A refused sign-in's row and its `high_risk_sign_in` event, committed together on their own."""
    async with ctx.services.db.transaction() as db:
        db.add(risk.row(ctx, REFUSED))
        await _event(db, ctx, risk, summary, REFUSED)


async def admit(db: AsyncSession, ctx: RequestContext, risk: SignInRisk, *, second_factor: bool) -> None:
    """A successful sign-in's row, in the transaction that opens its session. When the policy asked for a
    second factor the account does not have, the organization is told."""
    db.add(risk.row(ctx, SUCCESS))
    if risk.needs_second_factor and not second_factor:
        await _event(db, ctx, risk, "Sign-in without the second factor the policy asks for", "no_second_factor")


async def refuse_sso(ctx: RequestContext, risk: SignInRisk, created: bool) -> None:
    """An SSO sign-in refused for its risk (or for a second factor the IdP did not assert). An account this
    sign-in would have created was never written: the event stands alone, without a `sign_ins` row."""
    summary = (
        "Single sign-on refused for its risk"
        if risk.refused
        else "Single sign-on refused: the policy asks for a second factor the identity provider did not assert"
    )
    async with ctx.services.db.transaction() as db:
        if not created:
            db.add(risk.row(ctx, REFUSED))
        await _event(db, ctx, risk, summary, REFUSED, stored=not created)
