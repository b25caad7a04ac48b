"""Alerts by email for security events, and the wake-up of the delivery workers once an event commits.

`SecurityAlerts` is the sink `gateway/app.py` installs on the database
(`identity.security_events.install_event_sink`): for each event recorded in any of its sessions, it queues
one `security_alert` message (resolvers/mail.py, the mail outbox) to every owner and administrator of the
event's organization when the event's severity is one of `severities` (`PORTCULLIS_SECURITY_ALERT_EMAIL_
SEVERITIES`, by default high and critical; empty: no email). The messages are in the event's transaction:
they exist exactly when the event does. Once that transaction commits, the mail and webhook delivery
workers of this process are woken, so alerts leave at once rather than at the next poll.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from authz import BuiltinRole
from identity.webhooks import WebhookPolicy
from resolvers.mail import Mailer, queue_mail
from store.models import Membership, Organization, User
from store.security import SecurityEvent

log = logging.getLogger("portcullis.security_events")

_WAKE_KEY = "portcullis.security_event_wake"
ALERTED_ROLES = (BuiltinRole.OWNER.value, BuiltinRole.ADMIN.value)


@dataclass
class SecurityAlerts:
    mailer: Mailer | None
    severities: frozenset[str] = frozenset({"high", "critical"})
    webhooks: WebhookPolicy | None = None
    # recipients per event at most: an organization with more owners and admins mails the first ones
    max_recipients: int = 50

    async def __call__(self, db: AsyncSession, event: SecurityEvent) -> None:
        mailed = False
        if self.mailer is not None and event.severity in self.severities:
            mailed = await self._mail(db, event, self.mailer)
        self._wake_after_commit(db, mailed)

    async def _mail(self, db: AsyncSession, event: SecurityEvent, mailer: Mailer) -> bool:
        org = (
            await db.execute(select(Organization).where(col(Organization.id) == event.organization_id))
        ).scalar_one_or_none()
        if org is None:
            return False
        rows = (
            await db.execute(
                select(col(User.email))
                .join(Membership, col(Membership.user_id) == col(User.id))
                .where(
                    col(Membership.organization_id) == event.organization_id,
                    col(Membership.role).in_(ALERTED_ROLES),
                    col(User.is_active).is_(True),
                )
                .order_by(col(Membership.created_at), col(Membership.id))
                .limit(self.max_recipients)
            )
        ).scalars()
        recipients = list(dict.fromkeys(rows))
        queued = 0
        for to in recipients:
            try:
                await queue_mail(
                    db,
                    mailer,
                    to=to,
                    template="security_alert",
                    variables={
                        "organization_name": org.name,
                        "severity": event.severity,
                        "kind_label": event.kind.replace("_", " "),
                        "summary": event.summary,
                        "at": event.created_at,
                        "event_id": event.id,
                        "client_ip": event.client_ip,
                    },
                    organization_id=event.organization_id,
                    now=event.created_at,
                )
            except ValueError:
                # an address the outbox refuses: the alert to the others, and the event's cause, go on
                log.warning("security_alert_not_queued", extra={"event_id": event.id})
                continue
            queued += 1
        return queued > 0

    def _wake_after_commit(self, db: AsyncSession, mailed: bool) -> None:
        info = db.info
        wanted: set[str] = info.setdefault(_WAKE_KEY, set())
        first = not wanted
        wanted.add("webhooks")
        if mailed:
            wanted.add("mail")
        if not first:
            return
        mailer, webhooks = self.mailer, self.webhooks

        def wake(session: object) -> None:
            found = info.pop(_WAKE_KEY, set())
            if "webhooks" in found and webhooks is not None:
                webhooks.wake()
            if "mail" in found and mailer is not None:
                mailer.wake()

        def forget(session: object) -> None:
            info.pop(_WAKE_KEY, None)

        sync = db.sync_session
        sa_event.listen(sync, "after_commit", wake, once=True)
        sa_event.listen(sync, "after_rollback", forget, once=True)


def severities_of(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n.strip().lower() for n in names if n.strip())
