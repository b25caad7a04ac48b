"""The organization's security policy: `Organization.securityPolicy` and `updateSecurityPolicy`."""

from __future__ import annotations

import strawberry

from authz import Permission
from authz.security_policy import ConcurrentSessionAction, RiskAction, SignInMethod
from authz.security_policy import SecurityPolicy as Policy
from resolvers import security_policy as service
from resolvers.security_policy import SETTINGS, PolicyChanges
from schema.context import Info
from schema.directives import requires_scopes

# the enums of authz.security_policy, registered as GraphQL enums (strawberry.enum marks the classes themselves)
strawberry.enum(SignInMethod, name="SignInMethod")
strawberry.enum(ConcurrentSessionAction, name="ConcurrentSessionAction")
strawberry.enum(RiskAction, name="RiskAction")

_METHOD_ORDER = list(SignInMethod)


@strawberry.type(name="SecurityPolicy", description="The organization's security policy (docs/security-policies.md).")
class SecurityPolicy:
    password_min_length: int
    password_history: int = strawberry.field(description="How many earlier passwords may not be used again.")
    password_max_age_days: int | None = strawberry.field(description="null: passwords do not expire.")
    breached_password_check: bool
    session_idle_timeout_minutes: int | None = strawberry.field(
        description="A session unused this long ends; null: the gateway's default."
    )
    session_max_lifetime_hours: int | None = strawberry.field(
        description="A session ends this long after sign-in; null: the gateway's default."
    )
    max_concurrent_sessions: int | None = strawberry.field(description="Per member; null: no limit.")
    concurrent_session_action: ConcurrentSessionAction
    fresh_auth_minutes: int | None = strawberry.field(description="null: no fresh-authentication rule.")
    allowed_sign_in_methods: list[SignInMethod]
    break_glass_owners: list[strawberry.ID] = strawberry.field(
        description="Owners who may sign in with a password even when PASSWORD is not allowed."
    )
    require_mfa: bool
    api_key_max_lifetime_days: int | None = strawberry.field(description="null: keys may have no expiry.")
    ip_allowlist: list[str] = strawberry.field(description="CIDRs; empty: any address.")
    medium_risk_action: RiskAction
    high_risk_action: RiskAction

    @classmethod
    def of(cls, p: Policy) -> SecurityPolicy:
        return cls(
            password_min_length=p.password_min_length,
            password_history=p.password_history,
            password_max_age_days=p.password_max_age_days,
            breached_password_check=p.breached_password_check,
            session_idle_timeout_minutes=p.session_idle_timeout_minutes,
            session_max_lifetime_hours=p.session_max_lifetime_hours,
            max_concurrent_sessions=p.max_concurrent_sessions,
            concurrent_session_action=p.concurrent_session_action,
            fresh_auth_minutes=p.fresh_auth_minutes,
            allowed_sign_in_methods=[m for m in _METHOD_ORDER if m in p.allowed_sign_in_methods],
            break_glass_owners=[strawberry.ID(u) for u in sorted(p.break_glass_user_ids)],
            require_mfa=p.require_mfa,
            api_key_max_lifetime_days=p.api_key_max_lifetime_days,
            ip_allowlist=list(p.ip_allowlist),
            medium_risk_action=p.medium_risk_action,
            high_risk_action=p.high_risk_action,
        )


@strawberry.input(description="A partial update: an omitted setting keeps its value; null clears a nullable one.")
class SecurityPolicyInput:
    password_min_length: int | None = strawberry.UNSET
    password_history: int | None = strawberry.UNSET
    password_max_age_days: int | None = strawberry.UNSET
    breached_password_check: bool | None = strawberry.UNSET
    session_idle_timeout_minutes: int | None = strawberry.UNSET
    session_max_lifetime_hours: int | None = strawberry.UNSET
    max_concurrent_sessions: int | None = strawberry.UNSET
    concurrent_session_action: ConcurrentSessionAction | None = strawberry.UNSET
    fresh_auth_minutes: int | None = strawberry.UNSET
    allowed_sign_in_methods: list[SignInMethod] | None = strawberry.UNSET
    break_glass_owners: list[strawberry.ID] | None = strawberry.UNSET
    require_mfa: bool | None = strawberry.UNSET
    api_key_max_lifetime_days: int | None = strawberry.UNSET
    ip_allowlist: list[str] | None = strawberry.UNSET
    medium_risk_action: RiskAction | None = strawberry.UNSET
    high_risk_action: RiskAction | None = strawberry.UNSET
    confirm_own_address_excluded: bool | None = strawberry.field(
        default=False, description="Apply an ipAllowlist that does not include the caller's own address."
    )

    def changes(self) -> PolicyChanges:
        values = {}
        for name, graphql_name in SETTINGS.items():
            attribute = "break_glass_owners" if graphql_name == "breakGlassOwners" else name
            value = getattr(self, attribute)
            if value is not strawberry.UNSET:
                values[name] = value
        return PolicyChanges(values=values, confirm_own_address_excluded=bool(self.confirm_own_address_excluded))


async def organization_policy(info: Info, organization_id: str) -> SecurityPolicy:
    return SecurityPolicy.of(await service.get_policy(info.context, organization_id))


@strawberry.type
class SecurityPolicyMutation:
    @strawberry.mutation(
        description="Change the caller's organization's security policy; every process applies it from its next "
        "request. Omitted settings keep their value.",
        **requires_scopes(Permission.SECURITY_MANAGE),
    )
    async def update_security_policy(self, info: Info, input: SecurityPolicyInput) -> SecurityPolicy:
        return SecurityPolicy.of(await service.update_policy(info.context, input.changes()))
