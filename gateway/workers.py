"""The background senders every process runs beside its requests: the mail outbox, webhook deliveries and
report schedules. Each takes its work with a lease, so any number of processes run them side by side."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.mail import DeliveryPolicy, MailDelivery
from gateway.report_scheduler import ReportScheduler
from gateway.settings import Settings
from gateway.webhooks import RetryPolicy, WebhookSender
from resolvers.deps import Services


@dataclass(slots=True)
class Workers:
    mail: MailDelivery | None
    webhooks: WebhookSender | None
    reports: ReportScheduler

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
            reports=ReportScheduler(
                services,
                poll_seconds=settings.report_schedule_poll_seconds,
                lease_seconds=settings.report_schedule_lease_seconds,
            ),
        )

    def start(self) -> None:
        if self.webhooks is not None:
            self.webhooks.start()
        self.reports.start()
        if self.mail is not None:
            self.mail.start()

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.reports.stop()
        if self.mail is not None:
            await self.mail.stop()
