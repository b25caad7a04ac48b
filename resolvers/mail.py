"""Email the gateway sends: rendered from templates, queued in the caller's transaction, read back.

A message is a row of `mail_outbox` added to the session of the change that causes it, so it exists
exactly when that change commits: a rolled-back invitation sends nothing, and a committed one is sent
even if the process dies the next instant (the delivery worker, `gateway/mail.py`, picks it up after a
restart). Its content carries one-time links, so it is encrypted at rest (`SecretBox`, purpose
"mail"); the Message-ID is made here, once, so that a retry after a crash carries the same id and the
recipient's mail system can recognise a duplicate.

Without an SMTP server configured, messages are kept with the status `mailbox` for
`portcullis mail list|show`: a development gateway never silently drops an invitation.

Templates live in `resolvers/templates/mail/<name>.subject.txt`, `<name>.txt` and `<name>.html`
(Jinja2; the HTML part is autoescaped, the text part is not; an undefined variable is an error, so a
caller that forgets one fails its own request instead of mailing a broken message). Links put their
token in the URL fragment (`#token=`): browsers send neither the fragment to the server nor in a
Referer, so the token never lands in a web server's log.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from identity.secrets import SecretBox, SecretDecryptionError
from store.models import MailMessage, utcnow

if TYPE_CHECKING:
    from resolvers.deps import RequestContext

log = logging.getLogger("portcullis.mail")

TEMPLATE_DIR = Path(__file__).parent / "templates" / "mail"

# name -> the variables its callers pass (the templates also see `product_name` and `app_url`)
TEMPLATES: dict[str, frozenset[str]] = {
    "invitation": frozenset({"organization_name", "inviter", "role", "accept_url", "expires_at"}),
    "email_verification": frozenset({"verify_url", "expires_at"}),
    "password_reset": frozenset({"reset_url", "expires_at", "client_ip"}),
    "password_changed": frozenset({"at", "client_ip"}),
    "mfa_changed": frozenset({"change", "at"}),
    "email_change_confirm": frozenset({"confirm_url", "expires_at"}),
    "email_changed": frozenset({"new_email", "at"}),
    "email_in_use": frozenset({"at"}),
    "new_sign_in": frozenset({"at", "client_ip", "user_agent", "organization_name", "method"}),
    "security_alert": frozenset(
        {"organization_name", "severity", "kind_label", "summary", "at", "event_id", "client_ip"}
    ),
    "data_export_ready": frozenset({"download_url", "expires_at"}),
    "report_ready": frozenset(
        {"organization_name", "kind", "cadence", "period", "html_url", "pdf_url", "xlsx_url", "csv_url"}
    ),
}

# variables that take one of a few values: anything else is the caller's mistake, refused before rendering
CHOICES: dict[tuple[str, str], frozenset[str]] = {
    ("mfa_changed", "change"): frozenset({"enabled", "disabled", "recovery_codes_used"}),
}

PENDING, SENT, FAILED, MAILBOX = "pending", "sent", "failed", "mailbox"


class MailNotConfigured(RuntimeError):
    """`Services.mail` is None: the application was built without a mailer (`gateway.app.build_services`
    always makes one; a hand-built `Services` must pass `mail=`)."""


@dataclass
class Mailer:
    """What queueing a message needs, built once in `gateway/app.py` `build_services`.

    `smtp_configured`: messages go out through the delivery worker (`pending`); otherwise they stay in
    the local mailbox (`mailbox`). `waker` is set by this process's delivery worker while it runs."""

    box: SecretBox
    from_address: str
    app_url: str
    product_name: str = "Portcullis"
    smtp_configured: bool = False
    waker: Callable[[], None] | None = field(default=None, repr=False)

    def wake(self) -> None:
        """Tell this process's delivery worker to look at the outbox now (no-op when none runs)."""
        if self.waker is not None:
            self.waker()

    async def wake_after_commit(self) -> None:
        self.wake()

    def link(self, path: str, token: str) -> str:
        return f"{self.app_url}{path}#token={quote(token, safe='')}"

    @property
    def domain(self) -> str:
        return parseaddr(self.from_address)[1].rpartition("@")[2] or "localhost"


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class ReadMail:
    id: str
    recipient: str
    template: str
    subject: str
    text: str
    html: str
    status: str
    created_at: datetime
    sent_at: datetime | None
    message_id: str = ""
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    organization_id: str | None = None
    # False when no configured key decrypts the content (subject, text and html are then empty)
    readable: bool = True


def _when(value: datetime | None) -> str:
    if value is None:
        return "an unknown time"
    value = value.astimezone(UTC)
    return f"{value.day} {value:%B %Y, %H:%M} UTC"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_one_line,
    )
    env.filters["when"] = _when
    return env


_SPACE = re.compile(r"\s+")


def _one_line(value: Any) -> Any:
    """Every value a template prints is one line: a tenant's name or a user agent cannot start lines of
    its own in the text part (a made-up link under the real one)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _SPACE.sub(" ", value).strip()
    return value


def render(template: str, variables: Mapping[str, Any], *, product_name: str, app_url: str) -> RenderedMail:
    """The three parts of `template`. ValueError for an unknown name; jinja2's UndefinedError for a
    variable the caller did not pass."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown mail template {template!r}")
    for (name, variable), allowed in CHOICES.items():
        if name == template and variables.get(variable) not in allowed:
            raise ValueError(f"{template}: {variable} is one of {', '.join(sorted(allowed))}")
    env = _environment()
    values = {**variables, "product_name": product_name, "app_url": app_url}
    # a tenant's name may hold anything: the subject stays one header line
    subject = _SPACE.sub(" ", env.get_template(f"{template}.subject.txt").render(values)).strip()
    return RenderedMail(
        subject=subject,
        text=env.get_template(f"{template}.txt").render(values),
        html=env.get_template(f"{template}.html").render(values),
    )


def _check_recipient(to: str) -> str:
    address = to.strip()
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(address) > 320
        or any(c.isspace() or c in '<>,;"' or ord(c) < 32 for c in address)
    ):
        raise ValueError("the recipient is not an email address")
    return address


async def queue_mail(
    db: AsyncSession,
    mailer: Mailer,
    *,
    to: str,
    template: str,
    variables: Mapping[str, Any],
    organization_id: str | None = None,
    now: datetime | None = None,
) -> MailMessage:
    """Render `template` for `to` and add the message to `db`: it commits or rolls back with the
    caller's change. `pending` when an SMTP server is configured, `mailbox` otherwise."""
    rendered = render(template, variables, product_name=mailer.product_name, app_url=mailer.app_url)
    recipient = _check_recipient(to)
    at = now if now is not None else utcnow()
    content = json.dumps({"subject": rendered.subject, "text": rendered.text, "html": rendered.html})
    row = MailMessage(
        organization_id=organization_id,
        recipient=recipient,
        template=template,
        content_encrypted=mailer.box.encrypt(content),
        message_id=f"<{uuid.uuid4().hex}@{mailer.domain}>",
        status=PENDING if mailer.smtp_configured else MAILBOX,
        created_at=at,
        next_attempt_at=at,
    )
    db.add(row)
    if not mailer.smtp_configured:
        log.info("mail_kept_in_mailbox", extra={"mail_id": row.id, "template": template})
    return row


async def send_mail(
    ctx: RequestContext, *, to: str, template: str, variables: Mapping[str, Any], organization_id: str | None = None
) -> None:
    """Queue a message in the request's unit of work; the delivery worker is woken once it commits."""
    mailer = ctx.services.mail
    if mailer is None:
        raise MailNotConfigured("no mailer: Services.mail is None (gateway.app.build_services makes one)")
    await queue_mail(
        await ctx.db(),
        mailer,
        to=to,
        template=template,
        variables=variables,
        organization_id=organization_id,
        now=ctx.services.now(),
    )
    wake_after_commit(ctx)


def wake_after_commit(ctx: RequestContext) -> None:
    """Wake the delivery worker once the request's unit of work commits (one hook per request, however
    many messages it queued); for callers that use `queue_mail` on the request's session themselves."""
    mailer = ctx.services.mail
    if mailer is None:
        raise MailNotConfigured("no mailer: Services.mail is None (gateway.app.build_services makes one)")
    hook: Callable[[], Awaitable[None]] = mailer.wake_after_commit
    if hook not in ctx.after_commit:
        ctx.after_commit.append(hook)


def _box(mailer_or_box: Mailer | SecretBox) -> SecretBox:
    return mailer_or_box.box if isinstance(mailer_or_box, Mailer) else mailer_or_box


def _read(row: MailMessage, box: SecretBox) -> ReadMail:
    try:
        content = json.loads(box.decrypt(row.content_encrypted))
        readable = True
    except (SecretDecryptionError, ValueError):
        content, readable = {}, False
    return ReadMail(
        id=row.id,
        recipient=row.recipient,
        template=row.template,
        subject=content.get("subject", ""),
        text=content.get("text", ""),
        html=content.get("html", ""),
        status=row.status,
        created_at=row.created_at,
        sent_at=row.sent_at,
        message_id=row.message_id,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        organization_id=row.organization_id,
        readable=readable,
    )


async def read_mailbox(
    db: AsyncSession, mailer_or_box: Mailer | SecretBox, *, to: str | None = None, limit: int = 50
) -> list[ReadMail]:
    """The latest messages of the outbox (every status), newest first, decrypted; `to` filters by
    recipient (case-insensitive)."""
    query = select(MailMessage).order_by(col(MailMessage.created_at).desc(), col(MailMessage.id).desc())
    if to is not None:
        query = query.where(func.lower(col(MailMessage.recipient)) == to.strip().lower())
    rows = (await db.execute(query.limit(max(1, limit)))).scalars().all()
    box = _box(mailer_or_box)
    return [_read(row, box) for row in rows]


async def read_mail(db: AsyncSession, mailer_or_box: Mailer | SecretBox, mail_id: str) -> ReadMail | None:
    row = (await db.execute(select(MailMessage).where(col(MailMessage.id) == mail_id))).scalar_one_or_none()
    return None if row is None else _read(row, _box(mailer_or_box))
