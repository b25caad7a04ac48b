"""The audit stream sender: each organization's audit chain, in order, to its streams' destinations
(docs/audit.md, "Streaming"; payloads in identity/audit_streams.py).

Every process runs one `AuditStreamSender` (started with the other workers, gateway/workers.py). Every
`PORTCULLIS_AUDIT_STREAM_POLL_SECONDS` it looks for enabled streams whose cursor is behind their chain's
head and whose next attempt is due. Nothing of it runs on a request's path.

One process at a time per stream. A process sends to a stream only after one UPDATE gave it the stream's
lease (`SET lease_until = now + lease, lease_holder = me WHERE id = :id AND disabled_at IS NULL AND
next_attempt_at <= now AND (lease_until IS NULL OR lease_until < now)`), which the database grants to one
process; the lease (twice the attempt's timeout plus five seconds) outlasts the attempt, which is cut off at
the timeout. The batch is the next `PORTCULLIS_AUDIT_STREAM_BATCH_SIZE` entries after the cursor, in
sequence order; the cursor (`delivered_sequence`) advances to the batch's last entry only once the
destination accepted it, and only while this process still holds the lease. A crash between acceptance and
that UPDATE means the batch is sent again (at least once; a receiver recognises entries by sequence and
hash), never skipped.

Accepted: a 2xx answer (HTTP kinds), or for syslog every frame written and the connection still open a
moment later (a server that closes it has not taken the batch). Failures: a 5xx, 408 or 429, a timeout, a
refused or closed connection are transient: the next attempt follows after a delay doubling from
`PORTCULLIS_AUDIT_STREAM_RETRY_SECONDS` up to `..._RETRY_MAX_SECONDS`, with jitter (half the delay fixed,
half random), so a destination down for an hour catches up from its cursor when it is back; so is an
address the outbound guard refuses (a name that does not resolve is refused alike). Another 4xx, a
redirect (never followed), a TLS error or an undecryptable secret are permanent: the
stream is disabled at once, as after `PORTCULLIS_AUDIT_STREAM_DISABLE_AFTER_FAILURES` failures in a row,
with an `audit_stream_disabled` security event and an audit entry; `enableAuditStream` resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import or_, select, update
from sqlmodel import col

from gateway.settings import Settings
from identity import audit_streams as payloads
from identity.audit_streams import StreamKind
from identity.outbound import OutboundRefused
from identity.secrets import SecretDecryptionError
from identity.security_events import SecurityEventKind, Severity, record_security_event
from identity.tokens import KeyRing
from identity.webhooks import WebhookPolicy, signed_headers
from resolvers.audit_streams import chain_checkpoint
from store.audit import AuditAction, AuditEvent, append, readable_entries
from store.audit_streams import AuditStream
from store.background import Every
from store.db import Database
from store.models import AuditChainHead, AuditEntry, utcnow
from store.retention import AuditCheckpoint

log = logging.getLogger("portcullis.audit_streams")

USER_AGENT = "Portcullis-AuditStream/1"


@dataclass(frozen=True)
class StreamRetry:
    poll_seconds: float = 2.0
    timeout_seconds: float = 10.0
    batch_size: int = 100
    retry_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    disable_after_failures: int = 50
    ca_file: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> StreamRetry:
        return cls(
            poll_seconds=settings.audit_stream_poll_seconds,
            timeout_seconds=settings.audit_stream_timeout_seconds,
            batch_size=settings.audit_stream_batch_size,
            retry_seconds=settings.audit_stream_retry_seconds,
            retry_max_seconds=settings.audit_stream_retry_max_seconds,
            disable_after_failures=settings.audit_stream_disable_after_failures,
            ca_file=settings.audit_stream_ca_file,
        )

    @property
    def lease_seconds(self) -> float:
        return 2 * self.timeout_seconds + 5

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before the next attempt after `failures` failed ones in a row: doubling, capped, jittered."""
        full = min(self.retry_seconds * float(2 ** min(max(failures - 1, 0), 30)), self.retry_max_seconds)
        return full / 2 + rand() * full / 2

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context


class DeliveryFailed(Exception):
    """An attempt the destination did not accept; `permanent` ones disable the stream at once."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class _Claimed:
    id: str
    chain: str
    kind: StreamKind
    url: str
    secret_encrypted: str | None
    delivered_sequence: int
    consecutive_failures: int
    lease_until: datetime


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class AuditStreamSender:
    def __init__(
        self,
        db: Database,
        policy: WebhookPolicy,
        keys: KeyRing,
        retry: StreamRetry,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.policy = policy
        self.keys = keys
        self.retry = retry
        self.clock = clock
        self.holder = uuid.uuid4().hex
        self._loop = Every(
            retry.poll_seconds,
            self.deliver_due,
            name="portcullis-audit-streams",
            failure="audit stream pass failed",
            run_first=True,
            logger=log,
        )
        self._client: httpx2.AsyncClient | None = None
        self._tls = retry.tls_context()
        # (checkpoint id, chain) -> the chain's checkpoint record, signed once
        self._checkpoints: dict[tuple[str, str], dict[str, Any] | None] = {}
        # entries this process delivered since it started
        self.delivered = 0

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._client = httpx2.AsyncClient(
            transport=self.policy.outbound.transport(verify=self._tls),
            timeout=httpx2.Timeout(self.retry.timeout_seconds),
            follow_redirects=False,
        )
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    async def stop(self) -> None:
        """Finish the batch being sent (ten seconds at most) and stop; one cut off keeps its lease and is sent
        again once it lapses, by whichever process is running."""
        await self._loop.stop(grace_seconds=min(self.retry.timeout_seconds, 10.0))
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def _stopping(self) -> bool:
        return self._loop.stopping

    # -- one pass ----------------------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Send every due stream's entries, a batch at a time (the streams at once); entries delivered."""
        delivered = 0
        while not self._stopping:
            due = await self._due()
            if not due:
                break
            outcomes = await asyncio.gather(*(self._deliver(s) for s in due))
            delivered += sum(o or 0 for o in outcomes)
            if not any(o for o in outcomes):
                break  # every one failed, was caught up, or was taken by another process meanwhile
        return delivered

    async def _due(self) -> list[str]:
        now = self.clock()
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(col(AuditStream.id))
                .join(AuditChainHead, col(AuditChainHead.chain) == col(AuditStream.organization_id))
                .where(
                    col(AuditStream.disabled_at).is_(None),
                    col(AuditStream.next_attempt_at) <= now,
                    or_(col(AuditStream.lease_until).is_(None), col(AuditStream.lease_until) < now),
                    col(AuditChainHead.sequence) > col(AuditStream.delivered_sequence),
                )
                .order_by(col(AuditStream.id))
                .limit(50)
            )
            return list(rows.scalars())

    async def claim(self, stream_id: str) -> _Claimed | None:
        """This process's lease on the stream, or None when another process holds it (or it is not due)."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.retry.lease_seconds)
        async with self.db.transaction() as session:
            result = await session.execute(
                update(AuditStream)
                .where(
                    col(AuditStream.id) == stream_id,
                    col(AuditStream.disabled_at).is_(None),
                    col(AuditStream.next_attempt_at) <= now,
                    or_(col(AuditStream.lease_until).is_(None), col(AuditStream.lease_until) < now),
                )
                .values(lease_until=lease_until, lease_holder=self.holder)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            row = (await session.execute(select(AuditStream).where(col(AuditStream.id) == stream_id))).scalar_one()
            return _Claimed(
                row.id,
                row.organization_id,
                StreamKind(row.kind),
                row.url,
                row.secret_encrypted,
                row.delivered_sequence,
                row.consecutive_failures,
                lease_until,
            )

    def _held(self, claimed: _Claimed) -> tuple[Any, ...]:
        # only while this process still holds the lease: it never overwrites a later claim's outcome
        return (
            col(AuditStream.id) == claimed.id,
            col(AuditStream.lease_holder) == self.holder,
            col(AuditStream.lease_until) == claimed.lease_until,
            col(AuditStream.delivered_sequence) == claimed.delivered_sequence,
        )

    async def _deliver(self, stream_id: str) -> int:
        """The entries delivered to the stream in one batch (0: none due, failed, or another process has it)."""
        claimed = await self.claim(stream_id)
        if claimed is None:
            return 0
        async with self.db.transaction() as session:
            entries = list(
                (
                    await session.execute(
                        select(AuditEntry)
                        .where(
                            col(AuditEntry.chain) == claimed.chain,
                            col(AuditEntry.sequence) > claimed.delivered_sequence,
                        )
                        .order_by(col(AuditEntry.sequence))
                        .limit(self.retry.batch_size)
                    )
                ).scalars()
            )
            views = await readable_entries(session, entries)
            checkpoint = await self._checkpoint(session, claimed.chain) if entries else None
        if not entries:
            await self._release(claimed)
            return 0
        body = payloads.batch(claimed.id, claimed.chain, entries, views, checkpoint)
        try:
            async with asyncio.timeout(self.retry.timeout_seconds):
                await self._send(claimed, body)
        except DeliveryFailed as exc:
            await self._failed(claimed, str(exc), permanent=exc.permanent)
            return 0
        except OutboundRefused:
            # a name that does not resolve is refused alike: a DNS outage must not disable the stream
            await self._failed(claimed, "the URL's address is not one the gateway may send to")
            return 0
        except TimeoutError:
            await self._failed(claimed, f"no answer within {self.retry.timeout_seconds:g}s")
            return 0
        except Exception as exc:  # a connection refused or cut, a name that does not resolve...
            permanent = _tls_failure(exc)
            what = "TLS error" if permanent else "connection failed"
            await self._failed(claimed, f"{what}: {type(exc).__name__}: {str(exc)[:200]}", permanent=permanent)
            return 0
        last = entries[-1].sequence
        async with self.db.transaction() as session:
            result = await session.execute(
                update(AuditStream)
                .where(*self._held(claimed))
                .values(
                    delivered_sequence=last,
                    last_delivered_at=self.clock(),
                    consecutive_failures=0,
                    last_error=None,
                    lease_until=None,
                    lease_holder=None,
                )
                .execution_options(synchronize_session=False)
            )
        if getattr(result, "rowcount", 0) != 1:
            return 0
        self.delivered += len(entries)
        return len(entries)

    async def _checkpoint(self, session: Any, chain: str) -> dict[str, Any] | None:
        latest = (
            await session.execute(
                select(col(AuditCheckpoint.id)).order_by(col(AuditCheckpoint.created_at).desc()).limit(1)
            )
        ).scalar()
        if latest is None:
            return None
        key = (str(latest), chain)
        if key not in self._checkpoints:
            self._checkpoints[key] = await chain_checkpoint(session, self.keys, chain)
        return self._checkpoints[key]

    # -- sending -------------------------------------------------------------------------------------------

    def _secret(self, claimed: _Claimed) -> str:
        if claimed.secret_encrypted is None:
            raise DeliveryFailed("the stream has no secret", permanent=True)
        try:
            return self.policy.box.decrypt(claimed.secret_encrypted)
        except SecretDecryptionError:
            raise DeliveryFailed("the secret cannot be decrypted with the configured keys", permanent=True) from None

    async def _send(self, claimed: _Claimed, body: dict[str, Any]) -> None:
        if claimed.kind is StreamKind.SYSLOG:
            await self._syslog(claimed.url, payloads.syslog_frames(body))
            return
        headers = {"user-agent": USER_AGENT}
        if claimed.kind is StreamKind.WEBHOOK:
            content = payloads.webhook_body(body)
            headers.update(signed_headers(self._secret(claimed), payloads.webhook_id(body), content, self.clock()))
            headers["content-type"] = "application/json"
        elif claimed.kind is StreamKind.SPLUNK_HEC:
            content = payloads.hec_body(body)
            headers.update({"authorization": f"Splunk {self._secret(claimed)}", "content-type": "application/json"})
        else:
            content = payloads.ndjson_body(body)
            headers["content-type"] = "application/x-ndjson"
        assert self._client is not None
        try:
            # the answer's status is all that counts: its body is never read
            async with self._client.stream("POST", claimed.url, content=content, headers=headers) as response:
                status = response.status_code
        except httpx2.TimeoutException:
            raise TimeoutError from None
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise DeliveryFailed(f"HTTP {status}: redirects are not followed", permanent=True)
        if status in (408, 429) or status >= 500:
            raise DeliveryFailed(f"HTTP {status}")
        raise DeliveryFailed(f"HTTP {status}", permanent=True)

    async def _syslog(self, url: str, frames: bytes) -> None:
        host, port, tls = payloads.syslog_target(url)
        outbound = self.policy.outbound
        addresses = [str(a) for a in await outbound.addresses(payloads.check_url(url))] if outbound.enabled else [host]
        failure: OSError | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=self._tls if tls else None, server_hostname=host if tls else None
                )
            except ssl.SSLError:
                raise
            except OSError as exc:  # nothing was sent: the next checked address may answer
                failure = exc
                continue
            try:
                writer.write(frames)
                await writer.drain()
                # RFC 6587 has no acknowledgement; a server keeps the connection open while it reads, so one
                # that closes it within a moment of the batch has not taken it
                settle = min(0.25, self.retry.timeout_seconds / 4)
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), timeout=settle) == b"":
                        raise DeliveryFailed("the syslog server closed the connection")
            except (ConnectionError, ssl.SSLError) as exc:
                raise DeliveryFailed(f"the syslog server closed the connection ({type(exc).__name__})") from None
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            return
        assert failure is not None
        raise failure

    # -- outcomes ------------------------------------------------------------------------------------------

    async def _release(self, claimed: _Claimed) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(AuditStream)
                .where(*self._held(claimed))
                .values(lease_until=None, lease_holder=None)
                .execution_options(synchronize_session=False)
            )

    async def _failed(self, claimed: _Claimed, error: str, *, permanent: bool = False) -> None:
        now = self.clock()
        failures = claimed.consecutive_failures + 1
        disable = permanent or failures >= self.retry.disable_after_failures
        values: dict[str, Any] = {
            "lease_until": None,
            "lease_holder": None,
            "last_error": error[:500],
            "consecutive_failures": failures,
            "next_attempt_at": now + timedelta(seconds=self.retry.delay(failures)),
        }
        if disable:
            values["disabled_at"] = now
        async with self.db.transaction() as session:
            result = await session.execute(
                update(AuditStream)
                .where(*self._held(claimed), col(AuditStream.disabled_at).is_(None))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if disable and getattr(result, "rowcount", 0) == 1:
                await self._disabled(session, claimed, error, failures, permanent)
        fields = {"stream_id": claimed.id, "failures": failures, "error": error[:200]}
        log.warning("audit_stream_retry" if not disable else "audit_stream_disabled", extra=fields)

    async def _disabled(self, session: Any, claimed: _Claimed, error: str, failures: int, permanent: bool) -> None:
        why = "a permanent error" if permanent else f"{failures} failed attempts in a row"
        details = {"streamId": claimed.id, "kind": claimed.kind.value, "url": claimed.url, "error": error[:300]}
        await record_security_event(
            session,
            organization_id=claimed.chain,
            kind=SecurityEventKind.AUDIT_STREAM_DISABLED,
            severity=Severity.HIGH,
            summary=f"An audit stream was disabled after {why}",
            subject_id=claimed.id,
            details=details,
        )
        await append(
            session,
            [
                AuditEvent(
                    action=AuditAction.AUDIT_STREAM_DISABLED,
                    organization_id=claimed.chain,
                    resource_type="audit_stream",
                    resource_id=claimed.id,
                    details={**details, "deliveredSequence": claimed.delivered_sequence, "failures": failures},
                )
            ],
            entries=False,
        )
