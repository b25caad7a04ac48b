"""What the service functions need from the running application, built once in `create_app`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from authz import Principal
from identity.api_keys import ApiKeyCache, LastUsedRecorder
from identity.authentication import Authenticator
from identity.browser_sessions import BrowserSessions
from identity.lockout import LoginThrottle
from identity.oidc import OidcRelyingParty
from identity.passwords import PasswordHasherService
from identity.revocation import RevocationBus
from identity.secrets import SecretBox
from identity.sessions import SessionCache, SessionPolicy
from identity.tokens import AccessTokens
from resolvers.budgets import RateBudgets
from store.db import Database


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
    api_key_cache: ApiKeyCache | None = None
    key_limiter: Any = None
    budgets: RateBudgets | None = None
    secrets: SecretBox | None = None
    last_used: LastUsedRecorder | None = None
    api_key_env: str = "dev"
    api_key_pepper: bytes = b""
    oidc: OidcRelyingParty | None = None
    oidc_secrets: SecretBox | None = None
    browser: BrowserSessions | None = None
    clock: Callable[[], float] = field(default=time.time)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(tzinfo=None)


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
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def in_turn(*args: Any, **kwargs: Any) -> Any:
            async with self._lock:
                return await attr(*args, **kwargs)

        return in_turn


class RequestContext:
    """One per GraphQL request: the principal, the services and the request's unit of work.

    The database session is opened on first use and committed once, by the schema's unit-of-work
    extension, when the operation ends without error; anything that must happen only after that
    commit (telling other processes about a revocation) is queued in `after_commit`.
    """

    def __init__(self, services: Services, principal: Principal, *, request: Any = None,
                 response: Any = None, user_agent: str | None = None) -> None:
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
        self._db: AsyncSession | None = None
        self._db_in_turn: _OneAtATime | None = None

    async def db(self) -> AsyncSession:
        if self._db is None:
            self._db = self.services.db.session()
            self._db_in_turn = _OneAtATime(self._db)
        return cast(AsyncSession, self._db_in_turn)

    @property
    def db_opened(self) -> bool:
        return self._db is not None

    async def finish(self, *, commit: bool) -> None:
        session, self._db, self._db_in_turn = self._db, None, None
        if session is None:
            if commit:
                await self._run_after_commit()
            return
        try:
            if commit:
                await session.commit()
            else:
                await session.rollback()
        finally:
            await session.close()
        if commit:
            await self._run_after_commit()

    async def _run_after_commit(self) -> None:
        hooks, self.after_commit = self.after_commit, []
        for hook in hooks:
            await hook()
