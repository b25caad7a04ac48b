"""What the service functions need from the running application, built once in `create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from authz import Principal, PrincipalKind, permission_names
from authz.roles import PLATFORM_ROLE
from identity.address_blocks import AddressBlocks
from identity.api_keys import ApiKeyCache, LastUsedRecorder
from identity.authentication import Authenticator
from identity.browser_sessions import BrowserSessions
from identity.lockout import LoginThrottle
from identity.oidc import OidcRelyingParty
from identity.passwords import PasswordHasherService
from identity.redis_health import RedisHealth
from identity.revocation import RevocationBus
from identity.secrets import SecretBox
from identity.sessions import SessionCache, SessionPolicy
from identity.tokens import AccessTokens
from identity.totp import TotpService
from identity.webhooks import WebhookPolicy
from resolvers.budgets import RateBudgets
from resolvers.mail import Mailer
from store.audit import PLATFORM_CHAIN, ActorType, AuditEvent, AuditResult, AuditTrail
from store.audit import append as append_audit
from store.db import Database
from store.models import new_ordered_id
from store.telemetry import end_span, start_span


@dataclass
class Services:
    db: Database
    hasher: PasswordHasherService
    throttle: LoginThrottle
    tokens: AccessTokens
    sessions: SessionCache
    session_policy: SessionPolicy
    authenticator: Authenticator
    revocations: RevocationBus
    redis: Any = None
    # Redis's state, logged once per change (identity/redis_health.py); None in embedded mode
    redis_health: RedisHealth | None = None
    api_key_cache: ApiKeyCache | None = None
    # the admission step (gateway/admission.py): `admit(principal, ...)` -> a decision; None when off
    admission: Any = None
    budgets: RateBudgets | None = None
    usage: Any = None
    secrets: SecretBox | None = None
    last_used: LastUsedRecorder | None = None
    totp: TotpService | None = None
    api_key_env: str = "dev"
    api_key_pepper: bytes = b""
    oidc: OidcRelyingParty | None = None
    oidc_secrets: SecretBox | None = None
    browser: BrowserSessions | None = None
    # the gateway's own public address (`PORTCULLIS_PUBLIC_URL`), for addresses it hands out
    public_url: str = ""
    # outgoing mail (resolvers/mail.py): queue with `send_mail(ctx, ...)`
    mail: Mailer | None = None
    # security events' webhooks (resolvers/webhooks.py, gateway/webhooks.py)
    webhooks: WebhookPolicy | None = None
    clock: Callable[[], float] = field(default=time.time)
    # the team's upstreams (schema.upstreams.Forwarder); None when none is configured
    upstreams: Any = None
    audit: AuditTrail = None  # type: ignore[assignment]
    # the process's block list (identity/address_blocks.py); None when the edge does not check blocks
    address_blocks: AddressBlocks | None = None

    def __post_init__(self) -> None:
        if self.audit is None:
            self.audit = AuditTrail(self.db)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


class _OneAtATime:
    """The request's session, used by one resolver at a time.

    Sibling fields of a query resolve concurrently (`{ me { organization { id } } organization { children
    { id } members { edges { cursor } } } }`), while an AsyncSession refuses overlapping operations
    ("concurrent operations are not permitted"). Every awaited call on the session waits its turn; the
    synchronous ones (`add`) pass straight through.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._lock = asyncio.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._session, name)
        if name not in _SESSION_COROUTINES:
            return attr  # properties are read anew each time; `add` and the like pass straight through

        @functools.wraps(attr)
        async def in_turn(*args: Any, **kwargs: Any) -> Any:
            async with self._lock:
                return await attr(*args, **kwargs)

        self.__dict__[name] = in_turn  # made once per request: the next lookup finds it directly
        return in_turn


# AsyncSession's coroutine methods (execute, flush, commit, ...): the ones that wait their turn
_SESSION_COROUTINES = frozenset(
    name for name in dir(AsyncSession) if inspect.iscoroutinefunction(getattr(AsyncSession, name, None))
)


class RequestContext:
    """What every service function takes first: the principal, the services, the request id (on the
    principal) and the unit of work (`await ctx.db()`).

    One per GraphQL request; an HTTP route outside GraphQL builds one with `for_route`, the operator's
    command line with `for_operator`. The database session is opened on first use and committed once,
    with the audit entries the operation recorded (`audit`), when the operation ends without error: by
    the schema's unit-of-work extension, or by `unit_of_work()` outside GraphQL. Anything that must happen
    only after that commit (telling other processes about a revocation) is queued in `after_commit`.
    """

    def __init__(
        self,
        services: Services,
        principal: Principal,
        *,
        request: Any = None,
        response: Any = None,
        user_agent: str | None = None,
    ) -> None:
        self.services = services
        self.principal = principal
        self.request = request
        self.response = response
        self.user_agent = user_agent
        self.after_commit: list[Callable[[], Awaitable[None]]] = []
        # field nodes this operation may not resolve, decided before execution (schema.authorization)
        self.denied_fields: dict[int, Any] | None = None
        # the operation's static cost, computed before execution (schema.limits.cost)
        self.operation_cost: int | None = None
        # the paths of the denied fields (schema.authorization), for an explained operation
        self.denied_paths: list[Any] | None = None
        # the operation's requests to upstreams (schema.upstreams.ForwardState), when it selects their fields
        self.forwarding: Any = None
        # the admission decision taken before execution (schema.limits.admission)
        self.admission: Any = None
        # cost points charged while executing, for work priced by the data (resolvers.budgets.charge_work),
        # and the last such charge's decision (what is left of the budget after it)
        self.work_cost = 0
        self.work_charge: Any = None
        self._db: AsyncSession | None = None
        self._db_in_turn: _OneAtATime | None = None
        self._db_span: Any = None
        # a mutation: its unit of work waits for the writers' turn before it opens its session (SQLite)
        self.writes = False
        self._turn: asyncio.Lock | None = None
        self._opening: asyncio.Lock | None = None
        # entries that commit with the unit of work (`audit`), and every action recorded either way
        self.audit_events: list[AuditEvent] = []
        # entries that must be written whatever becomes of the unit of work (see `audit_durably`)
        self.durable_events: list[AuditEvent] = []
        self.audited_actions: set[str] = set()
        self.audited_now: set[str] = set()
        # the operator running a command (`for_operator`): the actor of its audit entries, and where it ran
        self.operator: str | None = None
        self.source: str | None = None

    @classmethod
    def for_route(cls, services: Services, principal: Principal, *, user_agent: str | None = None) -> RequestContext:
        """For an HTTP route outside GraphQL (SSO, SAML, report downloads); its work runs in `unit_of_work()`."""
        return cls(services, principal, user_agent=user_agent)

    @classmethod
    def for_operator(
        cls, services: Services, operator: str, *, organization_id: str | None = None, source: str = "cli"
    ) -> RequestContext:
        """For the platform operator's command line: a principal of the `platform` role holding every
        permission, in `organization_id` when the command names a tenant. Its audit entries name
        `operator` (who ran the command) as their actor, a `system` one, with `details.source`."""
        principal = Principal(
            kind=PrincipalKind.USER,
            organization_id=organization_id,
            roles=(PLATFORM_ROLE,),
            permissions=permission_names(),
            request_id=new_ordered_id(),
        )
        ctx = cls(services, principal)
        ctx.operator, ctx.source = operator, source
        return ctx

    @property
    def is_operator(self) -> bool:
        return self.operator is not None

    def audit_event(
        self,
        action: str,
        *,
        result: str = AuditResult.SUCCESS,
        resource_type: str | None = None,
        resource_id: str | None = None,
        details: dict[str, Any] | None = None,
        organization_id: str | None = None,
        actor_id: str | None = None,
        actor_type: str | None = None,
    ) -> AuditEvent:
        """An entry about this request: who (the principal, or `actor_id` for a caller not yet
        authenticated; the operator for a command), from where, under which request id, in the principal's
        tenant by default (`organization_id=PLATFORM_CHAIN` for an event outside any tenant)."""
        p = self.principal
        if organization_id is None:
            organization_id = p.organization_id
        elif organization_id == PLATFORM_CHAIN:
            organization_id = None
        if actor_type is None:
            actor_type = ActorType(p.kind.value) if p.is_authenticated else ActorType.ANONYMOUS
        if self.operator is not None:
            actor_type, actor_id = ActorType.SYSTEM, self.operator
            details = {**(details or {}), "source": self.source}
        return AuditEvent(
            action=action,
            result=result,
            organization_id=organization_id,
            actor_type=actor_type,
            actor_id=actor_id if actor_id is not None else p.subject_id,
            resource_type=resource_type,
            resource_id=resource_id,
            request_id=p.request_id,
            ip=p.client_ip,
            user_agent=self.user_agent,
            details=details or {},
        )

    def audit(self, action: str, **fields: Any) -> None:
        """Record `action` in the request's transaction: it commits with the mutation, or not at all.

        Arguments as for `audit_event`; `details` holds what changed (`store.audit.changes(old, new)`),
        never a secret."""
        self.audit_events.append(self.audit_event(action, **fields))
        self.audited_actions.add(action)

    async def audit_now(self, action: str, **fields: Any) -> None:
        """Record `action` in a transaction of its own, committed now, whatever becomes of the request
        (authentication events, denials)."""
        self.audited_now.add(action)
        await self.services.audit.record(self.audit_event(action, **fields))

    async def audit_durably(self, action: str, **fields: Any) -> None:
        """Record `action` whatever becomes of the request, like `audit_now`, without a transaction of its own
        while the request's unit of work is open: on SQLite that one holds the database's only write lock
        until it ends, so another transaction would wait for it in vain. The entry then commits with the unit
        of work, or is written on its own once it rolled back (what another service did, a forwarded
        mutation, stays recorded when the gateway's own writes are undone)."""
        self.audited_now.add(action)
        event = self.audit_event(action, **fields)
        if self._db is None:
            await self.services.audit.record(event)
        else:
            self.durable_events.append(event)

    async def db(self) -> AsyncSession:
        if self._db is None:
            if self.writes:
                await self._open_in_turn()
            else:
                self._open()
        return cast(AsyncSession, self._db_in_turn)

    def _open(self) -> None:
        self._db_span = start_span("db transaction")
        self._db = self.services.db.session()
        self._db_in_turn = _OneAtATime(self._db)

    async def _open_in_turn(self) -> None:
        # resolvers of one request may ask at once: the first waits for the turn, the others for the first
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._db is not None:
                return
            turn = self.services.db.writers_turn()
            if turn is not None:
                await turn.acquire()
                self._turn = turn
            self._open()

    def release_turn(self) -> None:
        """Give the writers' turn back (once the unit of work has committed or rolled back)."""
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.release()

    @property
    def db_opened(self) -> bool:
        return self._db is not None

    @contextlib.asynccontextmanager
    async def unit_of_work(self, *, writes: bool = True) -> AsyncIterator[RequestContext]:
        """Outside GraphQL (HTTP routes, the command line), what the schema's unit-of-work extension does
        around an operation: the block's work commits with the audit entries it recorded when the block ends
        without error, and is rolled back when anything is raised. `writes=False` for a read, which does not
        wait for the writers' turn."""
        self.writes = writes
        try:
            yield self
            await self.finish(commit=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.finish(commit=False)
            raise

    async def finish(self, *, commit: bool, audit_events: Sequence[AuditEvent] | None = None) -> None:
        """End the unit of work: commit it with its audit entries (`audit_events`, by default those recorded
        with `audit`) and then run `after_commit`, or roll it back. If the entries cannot be written, nothing
        is committed: the caller rolls back (`finish(commit=False)`)."""
        events = [*(self.audit_events if audit_events is None else audit_events), *self.durable_events]
        if commit and events:
            await append_audit(await self.db(), events, entries=False)
        # the next unit of work of this context (a route or a command may run several) starts afresh
        self.audit_events = []
        session, self._db, self._db_in_turn = self._db, None, None
        durable, self.durable_events = self.durable_events, []
        if session is None:
            self.release_turn()
            if not commit and durable:
                await self.services.audit.record(*durable)
            if commit:
                await self._run_after_commit()
            return
        try:
            try:
                if commit:
                    await session.commit()
                else:
                    await session.rollback()
            except BaseException:
                self.durable_events = durable  # the caller rolls back next: they are written then
                raise
        finally:
            try:
                await session.close()
            finally:
                self.release_turn()
                db_span, self._db_span = self._db_span, None
                end_span(db_span, failed=not commit)
        if not commit and durable:
            await self.services.audit.record(*durable)  # the write lock is free again
        if commit:
            await self._run_after_commit()

    async def _run_after_commit(self) -> None:
        hooks, self.after_commit = self.after_commit, []
        for hook in hooks:
            await hook()
