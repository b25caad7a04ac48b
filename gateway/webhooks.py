"""The webhook delivery worker: sends the outbox's pending deliveries (`webhook_deliveries`) once they have
committed, signed as Standard Webhooks says (identity/webhooks.py).

Every process runs one `WebhookSender` (started by the app's lifespan). It looks at the outbox when an
event commits in this process (`WebhookPolicy.wake()`), every `PORTCULLIS_WEBHOOK_POLL_SECONDS`, and at
start-up, which is how a delivery committed just before a crash goes out after the restart. Nothing of it
runs on a request's path: a receiver that is slow, fails or never answers delays only its own deliveries.

Claiming. As for mail (gateway/mail.py): a process sends a delivery only after one UPDATE has given it the
delivery's lease, `SET lease_until = now + lease, attempts = attempts + 1 WHERE id = :id AND status =
'pending' AND next_attempt_at <= now AND (lease_until IS NULL OR lease_until < now)`; the database runs
it for one process at a time per row, so of two processes exactly one sees a row count of 1. The lease is
twice the request timeout plus a second: it never lapses while its holder may still be sending or
recording the outcome. A process that dies mid-send leaves its lease: the delivery is retried once it
lapses, with the same `webhook-id`, which is how a receiver recognises the copy.

Attempts. Each attempt is a POST of the same body with a fresh `webhook-timestamp` and signature, through
the outbound guard (identity/outbound.py: the host is resolved and checked again, the request pinned to
the checked address; no redirect is followed, a 3xx is a failure), cut off after
`PORTCULLIS_WEBHOOK_TIMEOUT_SECONDS`. A 2xx answer delivers it. Anything else (another status, a refused
connection, a timeout, a refused address) schedules the next attempt after the next delay of
`PORTCULLIS_WEBHOOK_RETRY_SCHEDULE_SECONDS` (5 s, 30 s, 2 min, 10 min, 1 h, 6 h, 12 h by default: eight
attempts over about 19 hours); after the last one the delivery is `failed`. When a webhook's last
`PORTCULLIS_WEBHOOK_DISABLE_AFTER_FAILURES` finished deliveries all failed, the webhook is disabled and a
`webhook_disabled` security event recorded (its other pending deliveries are then given up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import or_, select, update
from sqlmodel import col

from gateway.settings import Settings
from identity.outbound import OutboundRefused
from identity.secrets import SecretDecryptionError
from identity.security_events import SecurityEventKind, Severity, record_security_event
from identity.webhooks import WebhookPolicy, body_of, signed_headers
from store.background import Every
from store.db import Database
from store.models import utcnow
from store.security import Webhook, WebhookDelivery

log = logging.getLogger("portcullis.webhooks")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
USER_AGENT = "Portcullis-Webhooks/1"


@dataclass(frozen=True)
class RetryPolicy:
    poll_seconds: float = 2.0
    timeout_seconds: float = 10.0
    schedule: tuple[float, ...] = (5, 30, 120, 600, 3600, 21_600, 43_200)
    disable_after_failures: int = 5
    batch_size: int = 20

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            poll_seconds=settings.webhook_poll_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            schedule=tuple(settings.webhook_retry_schedule_seconds),
            disable_after_failures=settings.webhook_disable_after_failures,
        )

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    @property
    def lease_seconds(self) -> float:
        return 2 * self.timeout_seconds + 1

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        return self.schedule[min(attempts, len(self.schedule)) - 1]


@dataclass(frozen=True)
class _Claimed:
    id: str
    organization_id: str
    webhook_id: str
    payload: dict[str, Any]
    attempts: int
    lease_until: datetime


class WebhookSender:
    def __init__(
        self, db: Database, policy: WebhookPolicy, retry: RetryPolicy, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.policy = policy
        self.retry = retry
        self.clock = clock
        self._loop = Every(
            retry.poll_seconds,
            self.deliver_due,
            name="portcullis-webhook-delivery",
            failure="webhook delivery pass failed",
            run_first=True,
            logger=log,
        )
        self._client: httpx2.AsyncClient | None = None
        # deliveries this process delivered since it started
        self.delivered = 0

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.policy.waker = self._loop.wake
        self._client = httpx2.AsyncClient(
            transport=self.policy.outbound.transport(),
            timeout=httpx2.Timeout(self.retry.timeout_seconds),
            follow_redirects=False,
        )
        self._loop.start()

    async def stop(self) -> None:
        """Finish the deliveries being sent (ten seconds at most) and stop; one cut off keeps its lease and
        is sent again once it lapses, by whichever process is running."""
        if self.policy.waker == self._loop.wake:
            self.policy.waker = None
        await self._loop.stop(grace_seconds=min(self.retry.timeout_seconds, 10.0))
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def _stopping(self) -> bool:
        return self._loop.stopping

    # -- one pass ----------------------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Send every delivery due now, a batch at a time (each batch's deliveries at once); the number
        delivered."""
        delivered = 0
        while not self._stopping:
            due = await self._due()
            if not due:
                break
            outcomes = await asyncio.gather(*(self._deliver(d) for d in due))
            delivered += sum(1 for o in outcomes if o)
            if not any(o is not None for o in outcomes):
                break  # every one was taken by another process meanwhile
        return delivered

    async def _due(self) -> list[str]:
        now = self.clock()
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(col(WebhookDelivery.id))
                .where(
                    col(WebhookDelivery.status) == PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                    or_(col(WebhookDelivery.lease_until).is_(None), col(WebhookDelivery.lease_until) < now),
                )
                .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
                .limit(self.retry.batch_size)
            )
            return list(rows.scalars())

    async def _deliver(self, delivery_id: str) -> bool | None:
        """True when delivered, False when the attempt failed, None when another process has it."""
        claimed = await self.claim(delivery_id)
        if claimed is None:
            return None
        async with self.db.transaction() as session:
            hook = (
                await session.execute(select(Webhook).where(col(Webhook.id) == claimed.webhook_id))
            ).scalar_one_or_none()
        if hook is None or hook.disabled_at is not None:
            await self._finish(claimed, FAILED, error="the webhook is disabled")
            return False
        try:
            secret = self.policy.box.decrypt(hook.secret_encrypted)
        except SecretDecryptionError:
            await self._failed(claimed, None, "the signing secret cannot be decrypted with the configured keys")
            return False
        body = body_of(claimed.payload)
        headers = {
            **signed_headers(secret, claimed.id, body, self.clock()),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        status: int | None = None
        try:
            assert self._client is not None
            async with asyncio.timeout(self.retry.timeout_seconds):
                # the answer's status is all that counts: its body is never read
                async with self._client.stream("POST", hook.url, content=body, headers=headers) as response:
                    status = response.status_code
        except OutboundRefused:
            await self._failed(claimed, None, "the URL's address is not one the gateway may send to")
            return False
        except (TimeoutError, httpx2.TimeoutException):
            await self._failed(claimed, None, f"no answer within {self.retry.timeout_seconds:g}s")
            return False
        except (httpx2.HTTPError, OSError) as exc:
            await self._failed(claimed, None, f"{type(exc).__name__}: {str(exc)[:200]}")
            return False
        if 200 <= status < 300:
            await self._finish(claimed, DELIVERED, code=status)
            self.delivered += 1
            log.info("webhook_delivered", extra={"delivery_id": claimed.id, "attempts": claimed.attempts})
            return True
        await self._failed(claimed, status, f"answered {status}")
        return False

    # -- the outbox ---------------------------------------------------------------------------------------

    async def claim(self, delivery_id: str) -> _Claimed | None:
        """Take a due delivery's lease (one UPDATE: no other process sends it until the lease lapses) and
        count the attempt; None when it is not due or another process holds it."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.retry.lease_seconds)
        async with self.db.transaction() as session:
            result = await session.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == delivery_id,
                    col(WebhookDelivery.status) == PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                    or_(col(WebhookDelivery.lease_until).is_(None), col(WebhookDelivery.lease_until) < now),
                )
                .values(lease_until=lease_until, attempts=col(WebhookDelivery.attempts) + 1)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            row = (
                await session.execute(
                    select(
                        col(WebhookDelivery.organization_id),
                        col(WebhookDelivery.webhook_id),
                        col(WebhookDelivery.payload),
                        col(WebhookDelivery.attempts),
                    ).where(col(WebhookDelivery.id) == delivery_id)
                )
            ).one()
        return _Claimed(delivery_id, row[0], row[1], dict(row[2]), row[3], lease_until)

    def _held(self, claimed: _Claimed) -> Any:
        # only while this process still holds the lease: it never overwrites a later claim's outcome
        return (
            col(WebhookDelivery.id) == claimed.id,
            col(WebhookDelivery.status) == PENDING,
            col(WebhookDelivery.lease_until) == claimed.lease_until,
        )

    async def _finish(
        self, claimed: _Claimed, status: str, *, error: str | None = None, code: int | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status, "lease_until": None, "last_error": error}
        if status == DELIVERED:
            values.update(delivered_at=self.clock(), last_status_code=code)
        async with self.db.transaction() as session:
            await session.execute(
                update(WebhookDelivery)
                .where(*self._held(claimed))
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    async def _failed(self, claimed: _Claimed, code: int | None, error: str) -> None:
        now = self.clock()
        give_up = claimed.attempts >= self.retry.max_attempts
        values: dict[str, Any] = {"lease_until": None, "last_error": error[:500], "last_status_code": code}
        if give_up:
            values["status"] = FAILED
        else:
            values["next_attempt_at"] = now + timedelta(seconds=self.retry.delay(claimed.attempts))
        async with self.db.transaction() as session:
            result = await session.execute(
                update(WebhookDelivery)
                .where(*self._held(claimed))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if give_up and getattr(result, "rowcount", 0) == 1:
                await self._maybe_disable(session, claimed, now)
        fields = {"delivery_id": claimed.id, "webhook_id": claimed.webhook_id, "attempts": claimed.attempts}
        if give_up:
            log.error("webhook_failed", extra={**fields, "error": error[:200]})
        else:
            log.warning("webhook_retry", extra={**fields, "error": error[:200]})

    async def _maybe_disable(self, session: Any, claimed: _Claimed, now: datetime) -> None:
        """After N consecutive given-up deliveries, the webhook is disabled with a security event."""
        n = self.retry.disable_after_failures
        last = (
            await session.execute(
                select(col(WebhookDelivery.status))
                .where(
                    col(WebhookDelivery.organization_id) == claimed.organization_id,
                    col(WebhookDelivery.webhook_id) == claimed.webhook_id,
                    col(WebhookDelivery.status).in_((DELIVERED, FAILED)),
                )
                .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
                .limit(n)
            )
        ).scalars()
        statuses = list(last)
        if len(statuses) < n or any(s != FAILED for s in statuses):
            return
        result = await session.execute(
            update(Webhook)
            .where(
                col(Webhook.organization_id) == claimed.organization_id,
                col(Webhook.id) == claimed.webhook_id,
                col(Webhook.disabled_at).is_(None),
            )
            .values(disabled_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return
        url = (await session.execute(select(col(Webhook.url)).where(col(Webhook.id) == claimed.webhook_id))).scalar()
        await record_security_event(
            session,
            organization_id=claimed.organization_id,
            kind=SecurityEventKind.WEBHOOK_DISABLED,
            severity=Severity.HIGH,
            summary=f"A webhook was disabled after {n} deliveries in a row failed",
            subject_id=claimed.webhook_id,
            details={"webhookId": claimed.webhook_id, "url": url},
        )
        log.error("webhook_disabled", extra={"webhook_id": claimed.webhook_id, "failures": n})
