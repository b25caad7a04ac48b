"""The background senders every process runs beside its requests: the mail outbox, webhook deliveries,
audit streams, report schedules and the retention pruning job. Each takes its work with a lease, so any
number of processes run them side by side (the pruning job and each audit stream, one process at a time)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit_streams import AuditStreamSender, StreamRetry
from gateway.mail import DeliveryPolicy, MailDelivery
from gateway.report_scheduler import ReportScheduler
from gateway.retention import RetentionPruner
from gateway.settings import Settings
from gateway.webhooks import RetryPolicy, WebhookSender
from resolvers.deps import Services


@dataclass(slots=True)
class Workers:
    mail: MailDelivery | None
    webhooks: WebhookSender | None
    audit_streams: AuditStreamSender | None
    reports: ReportScheduler
    retention: RetentionPruner

    @classmethod
    def build(cls, settings: Settings, services: Services) -> Workers:
        smtp = settings.smtp
        return cls(
            mail=MailDelivery(services.db, services.mail, smtp, DeliveryPolicy.of(settings))
            if smtp is not None and services.mail is not None
            else None,
            webhooks=WebhookSender(services.db, services.webhooks, RetryPolicy.of(settings))
            if services.webhooks is not None
            else None,
            audit_streams=AuditStreamSender(
                services.db, services.webhooks, services.tokens.keys, StreamRetry.of(settings)
            )
            if services.webhooks is not None
            else None,
            reports=ReportScheduler(
                services,
                poll_seconds=settings.report_schedule_poll_seconds,
                lease_seconds=settings.report_schedule_lease_seconds,
            ),
            retention=RetentionPruner(
                services,
                poll_seconds=settings.retention_poll_seconds,
                lease_seconds=settings.retention_lease_seconds,
                checkpoint_seconds=settings.retention_checkpoint_seconds,
                batch_size=settings.retention_batch_size,
            ),
        )

    def start(self) -> None:
        if self.webhooks is not None:
            self.webhooks.start()
        if self.audit_streams is not None:
            self.audit_streams.start()
        self.reports.start()
        self.retention.start()
        if self.mail is not None:
            self.mail.start()

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.audit_streams is not None:
            await self.audit_streams.stop()
        await self.reports.stop()
        await self.retention.stop()
        if self.mail is not None:
            await self.mail.stop()
