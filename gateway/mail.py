"""The mail delivery worker: sends the outbox's pending messages through SMTP once they have committed.

Every process with `PORTCULLIS_SMTP_URL` runs one `MailDelivery` (started by the app's lifespan). It
looks at the outbox when a request that queued mail commits (`Mailer.wake()`), every
`PORTCULLIS_MAIL_POLL_SECONDS`, and at start-up, which is how a message committed just before a crash
goes out after the restart.

Claiming. A process sends a message only after one UPDATE has given it the message's lease:
`SET lease_until = now + lease, attempts = attempts + 1 WHERE id = :id AND status = 'pending' AND
next_attempt_at <= now AND (lease_until IS NULL OR lease_until < now)`. The database runs that UPDATE
for one process at a time per row, so exactly one of two processes sees a row count of 1. Messages are
claimed one at a time, right before each is handed to the server, and one delivery (connecting
included) is cut off after `PORTCULLIS_SMTP_TIMEOUT_SECONDS`; the lease is twice that plus a second, so
a lease never lapses while its holder may still be sending or recording the outcome. A process that dies
mid-send leaves its lease: the message is retried once it lapses.

Guarantees. A committed message is sent at least once, however often the gateway or the SMTP server
goes down, until it is given up. It is sent more than once only when the server accepted it but its
answer never reached us (a connection cut right after the data, a process killed before it recorded
the success); every copy then carries the same Message-ID, which the recipient's mail system uses to
recognise it.

Failures. A refused connection, a timeout, a TLS or authentication failure, or a 4xx answer puts the
message back with `next_attempt_at` = now + an exponential backoff with jitter (from
`PORTCULLIS_MAIL_RETRY_SECONDS`, doubling up to `PORTCULLIS_MAIL_RETRY_MAX_SECONDS`). A 5xx refusal of
the recipient or of the message, or `PORTCULLIS_MAIL_MAX_ATTEMPTS` attempts, gives it up (`failed`, logged
as `mail_failed`). After a failure of the connection itself the worker stops its pass and waits for the
next one, so a server that is down costs one connection attempt per pass, not one per message. Logs carry
message ids, templates and SMTP status lines; never a body, a link, or the SMTP password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

import aiosmtplib
from sqlalchemy import or_, select, update
from sqlmodel import col

from gateway.settings import Settings
from gateway.smtp_url import SmtpServer
from identity.secrets import SecretBox, SecretDecryptionError
from resolvers.mail import FAILED, PENDING, SENT, Mailer
from store.background import Every
from store.db import Database
from store.models import MailMessage, utcnow

log = logging.getLogger("portcullis.mail")


def build_mailer(settings: Settings) -> Mailer:
    previous = [k.get_secret_value() for k in settings.previous_data_encryption_keys]
    return Mailer(
        box=SecretBox(settings.data_encryption_key.get_secret_value(), previous, purpose="mail"),
        from_address=settings.mail_sender,
        app_url=settings.links_url,
        product_name=settings.mail_product_name,
        smtp_configured=settings.smtp_url is not None,
    )


@dataclass(frozen=True)
class DeliveryPolicy:
    poll_seconds: float = 5.0
    timeout_seconds: float = 30.0
    max_attempts: int = 12
    retry_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    batch_size: int = 10

    @classmethod
    def of(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            poll_seconds=settings.mail_poll_seconds,
            timeout_seconds=settings.smtp_timeout_seconds,
            max_attempts=settings.mail_max_attempts,
            retry_seconds=settings.mail_retry_seconds,
            retry_max_seconds=settings.mail_retry_max_seconds,
        )

    @property
    def lease_seconds(self) -> float:
        return 2 * self.timeout_seconds + 1

    def backoff(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds before the next attempt after `attempts` failed ones: the doubled delay, capped, of which
        a random half is waited (so that messages refused together are not retried together), which still
        grows from one attempt to the next."""
        delay = min(self.retry_max_seconds, self.retry_seconds * 2.0 ** min(max(attempts - 1, 0), 60))
        return delay / 2 + draw() * delay / 2


@dataclass(frozen=True)
class _Claimed:
    id: str
    recipient: str
    template: str
    content_encrypted: str
    message_id: str
    created_at: datetime
    attempts: int
    lease_until: datetime


class _Refusal(Exception):
    """One delivery's failure, classified: give up or retry; and whether the connection is unusable."""

    def __init__(self, error: str, *, permanent: bool, connection_broken: bool) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent
        self.connection_broken = connection_broken


def build_message(claimed: _Claimed, content: dict[str, Any], from_address: str) -> EmailMessage:
    message = EmailMessage()
    message["Message-ID"] = claimed.message_id
    message["Date"] = format_datetime(claimed.created_at)
    message["From"] = from_address
    message["To"] = claimed.recipient
    message["Subject"] = content["subject"]
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(content["text"])
    message.add_alternative(content["html"], subtype="html")
    return message


class MailDelivery:
    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        server: SmtpServer,
        policy: DeliveryPolicy,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.mailer = mailer
        self.server = server
        self.policy = policy
        self.clock = clock
        self._sender = parseaddr(mailer.from_address)[1]
        self._loop = Every(
            policy.poll_seconds,
            self.deliver_due,
            name="portcullis-mail-delivery",
            failure="mail delivery pass failed",
            run_first=True,
            logger=log,
        )

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.mailer.waker = self._loop.wake
        self._loop.start()

    async def stop(self) -> None:
        """Finish the message being sent (for at most the SMTP timeout, ten seconds at most) and stop. A
        message cut off keeps its lease and is sent again once it lapses, by whichever process is running."""
        if self.mailer.waker == self._loop.wake:
            self.mailer.waker = None
        await self._loop.stop(grace_seconds=min(self.policy.timeout_seconds, 10.0))

    @property
    def _stopping(self) -> bool:
        return self._loop.stopping

    # -- one pass ----------------------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Send every message due now, batch after batch; the number sent. Stops early when the SMTP
        connection fails (the next pass tries again)."""
        sent = 0
        while not self._stopping:
            due = await self._due()
            if not due:
                break
            delivered, connection_failed = await self._deliver(due)
            sent += delivered
            if connection_failed:
                break
        return sent

    async def _due(self) -> list[str]:
        now = self.clock()
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(col(MailMessage.id))
                .where(
                    col(MailMessage.status) == PENDING,
                    col(MailMessage.next_attempt_at) <= now,
                    or_(col(MailMessage.lease_until).is_(None), col(MailMessage.lease_until) < now),
                )
                .order_by(col(MailMessage.next_attempt_at), col(MailMessage.id))
                .limit(self.policy.batch_size)
            )
            return list(rows.scalars())

    async def _deliver(self, due: list[str]) -> tuple[int, bool]:
        smtp: aiosmtplib.SMTP | None = None
        delivered = 0
        try:
            for mail_id in due:
                if self._stopping:
                    break
                claimed = await self._claim(mail_id)
                if claimed is None:
                    continue  # another process has it, or it is sent already
                try:
                    content = json.loads(self.mailer.box.decrypt(claimed.content_encrypted))
                    message = build_message(claimed, content, self.mailer.from_address)
                except (SecretDecryptionError, ValueError, KeyError) as exc:
                    reason = (
                        "the content cannot be decrypted with the configured keys"
                        if isinstance(exc, SecretDecryptionError)
                        else "the content cannot be read"
                    )
                    await self._failed(claimed, _Refusal(reason, permanent=True, connection_broken=False))
                    continue
                try:
                    async with asyncio.timeout(self.policy.timeout_seconds):
                        if smtp is None or not smtp.is_connected:
                            smtp = await self._connect()
                        await self._send(smtp, message, claimed.recipient)
                except (_Refusal, TimeoutError) as exc:
                    refusal = (
                        exc
                        if isinstance(exc, _Refusal)
                        else _Refusal(
                            f"no answer from the SMTP server within {self.policy.timeout_seconds:g}s",
                            permanent=False,
                            connection_broken=True,
                        )
                    )
                    if refusal.connection_broken and smtp is not None:
                        smtp.close()  # mid-command: nothing more is said on it
                        smtp = None
                    await self._failed(claimed, refusal)
                    if refusal.connection_broken:
                        return delivered, True
                    continue
                await self._sent(claimed)
                delivered += 1
            return delivered, False
        finally:
            if smtp is not None:
                await self._close(smtp)

    # -- SMTP ---------------------------------------------------------------------------------------------

    def client(self) -> aiosmtplib.SMTP:
        s = self.server
        start_tls = None if s.implicit_tls else {"auto": None, "require": True, "off": False}[s.starttls]
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            use_tls=s.implicit_tls,
            start_tls=start_tls,
            timeout=self.policy.timeout_seconds,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self.client()
        try:
            await smtp.connect()
        except asyncio.CancelledError:
            smtp.close()
            raise
        except Exception as exc:
            smtp.close()
            raise _Refusal(self._describe(exc), permanent=False, connection_broken=True) from None
        return smtp

    async def _send(self, smtp: aiosmtplib.SMTP, message: EmailMessage, recipient: str) -> None:
        try:
            await smtp.send_message(message, sender=self._sender, recipients=[recipient])
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0] if exc.recipients else None
            code = first.code if first is not None else 0
            text = self._describe(first) if first is not None else "recipient refused"
            raise _Refusal(text, permanent=code >= 500, connection_broken=False) from None
        except aiosmtplib.SMTPDataError as exc:
            raise _Refusal(self._describe(exc), permanent=exc.code >= 500, connection_broken=False) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            # the From address is refused for every message: a configuration error, retried until fixed
            raise _Refusal(self._describe(exc), permanent=False, connection_broken=False) from None
        except aiosmtplib.SMTPNotSupported as exc:
            # an address this server cannot carry (non-ASCII without SMTPUTF8)
            raise _Refusal(self._describe(exc), permanent=True, connection_broken=False) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _Refusal(self._describe(exc), permanent=False, connection_broken=True) from None

    async def _close(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(self.policy.timeout_seconds, 5.0)):
                    await smtp.quit()
        smtp.close()

    def _describe(self, exc: BaseException) -> str:
        """A short account of a failure for `last_error` and the logs: the SMTP status line, or the kind
        of failure; never the password, whatever a server or a library puts in its message."""
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            text = f"{exc.code} {exc.message}"
        elif isinstance(exc, aiosmtplib.SMTPException):
            text = exc.message
        else:
            text = f"{type(exc).__name__}: {exc}"
        password = self.server.password
        if password:
            text = text.replace(password, "***")
        text = " ".join(text.split())
        return text[:200] or type(exc).__name__

    # -- the outbox ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _writing(self) -> Any:
        turn = self.db.writers_turn()
        if turn is None:
            async with self.db.transaction() as session:
                yield session
            return
        async with turn, self.db.transaction() as session:
            yield session

    async def _claim(self, mail_id: str) -> _Claimed | None:
        now = self.clock()
        lease_until = now + timedelta(seconds=self.policy.lease_seconds)
        async with self._writing() as session:
            result = await session.execute(
                update(MailMessage)
                .where(
                    col(MailMessage.id) == mail_id,
                    col(MailMessage.status) == PENDING,
                    col(MailMessage.next_attempt_at) <= now,
                    or_(col(MailMessage.lease_until).is_(None), col(MailMessage.lease_until) < now),
                )
                .values(lease_until=lease_until, attempts=col(MailMessage.attempts) + 1)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                return None
            row = (
                await session.execute(
                    select(
                        col(MailMessage.recipient),
                        col(MailMessage.template),
                        col(MailMessage.content_encrypted),
                        col(MailMessage.message_id),
                        col(MailMessage.created_at),
                        col(MailMessage.attempts),
                    ).where(col(MailMessage.id) == mail_id)
                )
            ).one()
        return _Claimed(
            id=mail_id,
            recipient=row[0],
            template=row[1],
            content_encrypted=row[2],
            message_id=row[3],
            created_at=row[4],
            attempts=row[5],
            lease_until=lease_until,
        )

    async def _sent(self, claimed: _Claimed) -> None:
        now = self.clock()
        async with self._writing() as session:
            await session.execute(
                update(MailMessage)
                .where(col(MailMessage.id) == claimed.id, col(MailMessage.status) == PENDING)
                .values(status=SENT, sent_at=now, lease_until=None, last_error=None)
                .execution_options(synchronize_session=False)
            )
        log.info("mail_sent", extra={"mail_id": claimed.id, "template": claimed.template, "attempts": claimed.attempts})

    async def _failed(self, claimed: _Claimed, refusal: _Refusal) -> None:
        now = self.clock()
        give_up = refusal.permanent or claimed.attempts >= self.policy.max_attempts
        values: dict[str, Any] = {"lease_until": None, "last_error": refusal.error}
        if give_up:
            values["status"] = FAILED
        else:
            delay = self.policy.backoff(claimed.attempts)
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        async with self._writing() as session:
            # only while this process still holds the lease: it never overwrites a later claim's outcome
            await session.execute(
                update(MailMessage)
                .where(
                    col(MailMessage.id) == claimed.id,
                    col(MailMessage.status) == PENDING,
                    col(MailMessage.lease_until) == claimed.lease_until,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        # a server's answer may quote the address: the row keeps it, the log does not
        error = re.sub(re.escape(claimed.recipient), "<recipient>", refusal.error, flags=re.IGNORECASE)
        fields = {"mail_id": claimed.id, "template": claimed.template, "attempts": claimed.attempts, "error": error}
        if give_up:
            log.error("mail_failed", extra={**fields, "reason": "refused" if refusal.permanent else "max_attempts"})
        else:
            log.warning("mail_retry", extra={**fields, "retry_in_seconds": round(delay, 3)})
