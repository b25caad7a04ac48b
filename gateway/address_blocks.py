"""Address blocks at the edge, and the abuse signals that make automatic ones (docs/address-blocking.md).

`AddressBlockMiddleware` is the first thing after the request's id (and CORS preflights): a request
from an address under a platform-wide block is answered 403 `ADDRESS_BLOCKED` before any other work,
whatever it carries (`/healthz`, `/readyz` and `/metrics` excepted: probes and scrapers). It also notes how
each request ended: a 401 or a 429 counts towards the address's abuse signals once the answer is sent.
`TenantBlockMiddleware` runs right after authentication: a caller whose principal belongs to an organization
that blocked the address is refused the same way.

`WindowAbuseSignals` counts each signal per address in a moving window (gateway/windows.py: in the process,
or in Redis for every process at once): failed sign-ins naming distinct accounts, invalid credentials, rate
limit refusals. An address over a threshold is blocked platform-wide for the first of the durations, longer
each time it was blocked automatically within the repeat period. Addresses on the allowlist are never
counted, never blocked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from authz.errors import ErrorCode
from gateway.middleware import ClientAddress, graphql_error, send_json
from gateway.settings import Settings
from gateway.windows import Limit, StoreUnavailable, WindowStore
from identity.address_blocks import BLOCKED_MESSAGE, AddressBlocks, offender_network
from resolvers.address_blocks import block_automatically
from resolvers.deps import Services

log = logging.getLogger("portcullis.blocks")

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

SIGN_INS, INVALID_CREDENTIALS, RATE_LIMITED = "failed_sign_ins", "invalid_credentials", "rate_limited"


async def refuse_blocked(send: Send) -> None:
    await send_json(send, 403, graphql_error(BLOCKED_MESSAGE, ErrorCode.ADDRESS_BLOCKED.value))


class AddressBlockMiddleware:
    """Platform-wide blocks, before any other work; and each answer's status, for the abuse signals."""

    def __init__(self, app: ASGIApp, *, blocks: AddressBlocks, client_address: ClientAddress) -> None:
        self.app = app
        self.blocks = blocks
        self.client_address = client_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        blocks = self.blocks
        if blocks.platform_active:
            ip = self.client_address(scope)
            if blocks.platform_refuses(ip):
                blocks.on_refused("platform")
                log.info("address_blocked", extra={"scope": "platform", "client_ip": ip, "request_id": _rid(scope)})
                await refuse_blocked(send)
                return
        signals = blocks.signals
        if signals is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)
        state = scope.get("state") or {}
        status = state.get("response_status")  # the edge's wrapper of `send` records it (gateway/tracing.py)
        if status == 401 or status == 429:
            principal = state.get("principal")
            org = principal.organization_id if principal is not None else None
            try:
                await signals.refused(state.get("client_ip") or self.client_address(scope), status, org)
            except Exception:  # the answer has left; only the count is lost, and that is logged
                log.exception("abuse signal not counted", extra={"request_id": _rid(scope)})


class TenantBlockMiddleware:
    """After authentication: the caller's organization's own blocks."""

    def __init__(self, app: ASGIApp, *, blocks: AddressBlocks) -> None:
        self.app = app
        self.blocks = blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.blocks.tenants and scope["type"] == "http":
            state = scope.get("state") or {}
            principal = state.get("principal")
            org = principal.organization_id if principal is not None else None
            if org is not None and self.blocks.tenant_refuses(org, state.get("client_ip")):
                self.blocks.on_refused("tenant")
                log.info(
                    "address_blocked",
                    extra={"scope": "tenant", "client_ip": state.get("client_ip"), "request_id": _rid(scope)},
                )
                await refuse_blocked(send)
                return
        await self.app(scope, receive, send)


def _rid(scope: Scope) -> str | None:
    return (scope.get("state") or {}).get("request_id")


@dataclass(frozen=True, slots=True)
class AbusePolicy:
    """Thresholds (0: the signal is off) within their windows, and the growing durations of a block."""

    sign_in_accounts: int = 20
    sign_in_window_seconds: int = 600
    invalid_credentials: int = 100
    invalid_credentials_window_seconds: int = 60
    rate_limited: int = 300
    rate_limited_window_seconds: int = 300
    durations_seconds: tuple[int, ...] = (900, 3600, 86_400)
    repeat_days: int = 30


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class WindowAbuseSignals:
    """The abuse signals, counted per address in the window store; over a threshold, an automatic block."""

    def __init__(self, services: Services, windows: WindowStore, blocks: AddressBlocks, policy: AbusePolicy) -> None:
        self.services = services
        self.windows = windows
        self.blocks = blocks
        self.policy = policy
        self.on_blocked: Callable[[str], None] = lambda _signal: None
        self._blocking: set[str] = set()

    async def sign_in_failed(self, client_ip: str | None, account: str, organization_id: str | None) -> None:
        threshold, window = self.policy.sign_in_accounts, self.policy.sign_in_window_seconds
        offender = self._offender(client_ip) if threshold > 0 else None
        if offender is None:
            return
        address = _digest(offender)
        try:
            # the account is counted once per window: the address's count is of distinct accounts
            first = await self.windows.take([Limit("abuse-account", f"ab:a:{address}:{_digest(account)}", 1, window)])
            if not first.admitted:
                return
            outcome = await self.windows.take([Limit("abuse-sign-ins", f"ab:s:{address}", threshold - 1, window)])
        except StoreUnavailable as exc:
            self._unavailable(SIGN_INS, exc)
            return
        if not outcome.admitted:
            await self._block(offender, SIGN_INS, organization_id, {"accounts": threshold, "windowSeconds": window})

    async def refused(self, client_ip: str | None, status: int, organization_id: str | None) -> None:
        policy = self.policy
        if status == 401:
            signal, threshold, window, key = (
                INVALID_CREDENTIALS,
                policy.invalid_credentials,
                policy.invalid_credentials_window_seconds,
                "u",
            )
        else:
            signal, threshold, window, key = RATE_LIMITED, policy.rate_limited, policy.rate_limited_window_seconds, "r"
        offender = self._offender(client_ip) if threshold > 0 else None
        if offender is None:
            return
        try:
            outcome = await self.windows.take(
                [Limit(f"abuse-{key}", f"ab:{key}:{_digest(offender)}", threshold - 1, window)]
            )
        except StoreUnavailable as exc:
            self._unavailable(signal, exc)
            return
        if not outcome.admitted:
            await self._block(offender, signal, organization_id, {"requests": threshold, "windowSeconds": window})

    def _unavailable(self, signal: str, exc: StoreUnavailable) -> None:
        """A signal not counted: Redis's outage is logged once (identity/redis_health.py); in embedded mode, where
        the windows cannot fail that way, each is."""
        health = self.services.redis_health
        if health is not None:
            health.failed("abuse-signals", exc)
        else:
            log.warning("abuse signal not counted", extra={"signal": signal, "error": str(exc)})

    def _offender(self, client_ip: str | None) -> str | None:
        """The range counted and blocked for `client_ip` (its /32, or its /64 in IPv6); None for an address on
        the allowlist, or no address at all."""
        if not client_ip or self.blocks.allowed(client_ip):
            return None
        network = offender_network(client_ip)
        return str(network) if network is not None else None

    async def _block(self, offender: str, signal: str, organization_id: str | None, details: dict[str, int]) -> None:
        if offender in self._blocking:
            return
        self._blocking.add(offender)
        try:
            row = await block_automatically(
                self.services,
                offender,
                signal,
                durations=list(self.policy.durations_seconds),
                repeat_days=self.policy.repeat_days,
                organization_id=organization_id,
                details=details,
            )
            if row is not None:
                self.on_blocked(signal)
                log.warning(
                    "address_blocked_automatically",
                    extra={"cidr": offender, "signal": signal, "block_id": row.id},
                )
        except Exception:
            log.exception("automatic block not written", extra={"cidr": offender, "signal": signal})
        finally:
            self._blocking.discard(offender)


def install_abuse_signals(services: Services, policy: AbusePolicy) -> WindowAbuseSignals | None:
    """The abuse signals counted in the admission's window store, attached to the block list."""
    blocks = services.address_blocks
    store = getattr(services.admission, "store", None)
    if blocks is None or store is None:
        return None
    signals = WindowAbuseSignals(services, store, blocks, policy)
    blocks.signals = signals
    return signals


def abuse_policy(settings: Settings) -> AbusePolicy:
    return AbusePolicy(
        sign_in_accounts=settings.block_sign_in_accounts,
        sign_in_window_seconds=settings.block_sign_in_window_seconds,
        invalid_credentials=settings.block_invalid_credentials,
        invalid_credentials_window_seconds=settings.block_invalid_credentials_window_seconds,
        rate_limited=settings.block_rate_limited,
        rate_limited_window_seconds=settings.block_rate_limited_window_seconds,
        durations_seconds=tuple(settings.block_durations_seconds),
        repeat_days=settings.block_repeat_days,
    )
