"""The report schedules' runner: every gateway process runs one (started by the app's lifespan).

It looks for due schedules at start-up and every `PORTCULLIS_REPORT_SCHEDULE_POLL_SECONDS`, like the mail
delivery worker looks at the outbox (gateway/mail.py), and with the same lease design: a schedule is run
only after one UPDATE has given this process its lease (`resolvers.report_schedules.claim`), so one
process runs each. The lease (`PORTCULLIS_REPORT_SCHEDULE_LEASE_SECONDS`) outlasts a generation; a process
that dies mid-run leaves it, and the period is run once it lapses. A period that was committed is never
run again (`report_schedule_runs` is unique per schedule and period). After downtime, every missed period
is run, oldest first, in the first pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from resolvers.deps import Services
from resolvers.report_schedules import claim, due_schedules, run_schedule
from store.background import Every

log = logging.getLogger("portcullis.reports")


class ReportScheduler:
    def __init__(
        self,
        services: Services,
        *,
        poll_seconds: float = 60.0,
        lease_seconds: float = 600.0,
        batch_size: int = 10,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.services = services
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.batch_size = batch_size
        self.clock = clock or services.now
        self._loop = Every(
            poll_seconds,
            self.run_due,
            name="portcullis-report-scheduler",
            failure="report schedule pass failed",
            run_first=True,
            logger=log,
        )

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    async def stop(self) -> None:
        """Finish the schedule being run (ten seconds at most) and stop; one cut off keeps its lease and is
        run again once it lapses, by whichever process is running."""
        await self._loop.stop(grace_seconds=10.0)

    @property
    def _stopping(self) -> bool:
        return self._loop.stopping

    async def run_due(self) -> dict[str, int]:
        """Run every period due now, missed ones included, each claimed first; what became of them."""
        outcomes: dict[str, int] = {}
        while not self._stopping:
            now = self.clock()
            due = await due_schedules(self.services, now, self.batch_size)
            progressed = False
            for schedule_id in due:
                if self._stopping:
                    break
                schedule = await claim(self.services, schedule_id, now, self.lease)
                if schedule is None:
                    continue  # another process has it, or it has moved on
                try:
                    outcome = await run_schedule(self.services, schedule, now)
                except Exception:
                    # kept leased: tried again once the lease lapses
                    log.exception("report schedule run failed", extra={"schedule_id": schedule_id})
                    outcome = "failed"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                progressed = progressed or outcome in ("generated", "refused", "duplicate")
            if not progressed:
                break
        return outcomes
