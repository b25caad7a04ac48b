"""Email through the outbox, against a real SMTP server (aiosmtpd on a free port) that records what it
received and can be told to refuse: delivered once after commit, nothing on rollback, the local mailbox
without SMTP, a server that is down or refuses for a while, two workers on one database, STARTTLS, TLS
and authentication, and real gateway processes killed between commit and send."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ipaddress
import itertools
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from authz import anonymous
from gateway.app import create_app
from gateway.cli import main as cli_main
from gateway.mail import DeliveryPolicy, build_mailer
from gateway.settings import Settings, UnusableSettingError, parse_smtp_url
from resolvers.deps import RequestContext
from resolvers.mail import Mailer, MailNotConfigured, queue_mail, read_mailbox, send_mail
from store.db import Database
from tests.conftest import make_settings, running, sql
from tests.gateway.test_shared_mode import gateway_processes
from tests.mail import last_mail, token_in
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
SENDER = "Portcullis <no-reply@portcullis.test>"
APP_URL = "https://app.portcullis.test"
EXPIRES = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)


# -- the SMTP server ------------------------------------------------------------------------------------


@dataclass
class Received:
    message: EmailMessage
    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    login: bytes | None
    at: datetime


@dataclass
class SmtpSink:
    """An aiosmtpd handler keeping what it received. `refuse_next` answers 451 to that many recipients
    (one per delivery attempt); `refuse` answers a given reply to an address, always."""

    received: list[Received] = field(default_factory=list)
    attempts: list[tuple[float, str]] = field(default_factory=list)
    refuse_next: int = 0
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.lock:
            self.attempts.append((time.monotonic(), address))
            if address in self.refuse:
                return self.refuse[address]
            if self.refuse_next > 0:
                self.refuse_next -= 1
                return "451 4.3.2 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self.lock:
            self.received.append(
                Received(
                    message,
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    session.ssl is not None,
                    session.auth_data.login if session.auth_data is not None else None,
                    datetime.now(UTC),
                )
            )
        return "250 2.0.0 queued"

    def ids(self) -> list[str]:
        with self.lock:
            return [r.message["Message-ID"] for r in self.received]


@contextlib.contextmanager
def smtp_server(port: int | None = None, sink: SmtpSink | None = None, **kwargs: Any) -> Iterator[SmtpSink]:
    sink = sink or SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port or free_port(), **kwargs)
    controller.start()
    sink.port = controller.port
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


def mail_settings(database_url: str, signing_key: str, smtp_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_url": smtp_url,
        "mail_from": SENDER,
        "app_url": APP_URL,
        "mail_poll_seconds": 0.05,
        "smtp_timeout_seconds": 2,
        "mail_retry_seconds": 0.05,
        "mail_retry_max_seconds": 0.2,
    }
    values.update(overrides)
    return make_settings(database_url, signing_key, **values)


async def eventually(check: Callable[[], Any], within: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.02)


def outbox(url: str) -> list[Any]:
    return sql(
        url,
        "SELECT id, recipient, status, attempts, message_id, next_attempt_at, lease_until, last_error,"
        " sent_at FROM mail_outbox ORDER BY created_at, id",
    )


def reset_variables(mailer: Mailer, token: str) -> dict[str, Any]:
    return {"reset_url": mailer.link("/reset-password", token), "expires_at": EXPIRES, "client_ip": "203.0.113.7"}


async def queue(app: Any, recipients: list[str], template: str = "password_reset") -> list[str]:
    """Queue one message to each recipient in one transaction, commit, wake the worker."""
    services = app.state.services
    async with services.db.transaction() as session:
        rows = [
            await queue_mail(
                session, services.mail, to=to, template=template, variables=reset_variables(services.mail, f"tok-{i}")
            )
            for i, to in enumerate(recipients)
        ]
    services.mail.wake()
    return [row.message_id for row in rows]


# -- delivered after commit, once -----------------------------------------------------------------------


async def test_committed_mail_is_delivered_once_with_both_parts(
    database_url: str, signing_key: str, smtp: SmtpSink
) -> None:
    app = create_app(mail_settings(database_url, signing_key, f"smtp://127.0.0.1:{smtp.port}"))
    async with running(app):
        services = app.state.services
        ctx = RequestContext(services, anonymous())
        token = "tok_Invitation-123"
        await send_mail(
            ctx,
            to="alice@example.com",
            template="invitation",
            variables={
                "organization_name": "Acme",
                "inviter": "Olivia Owner",
                "role": "admin",
                "accept_url": services.mail.link("/invitations/accept", token),
                "expires_at": EXPIRES,
            },
        )
        await send_mail(
            ctx,
            to="bob@example.com",
            template="email_verification",
            variables={
                "verify_url": services.mail.link("/verify-email", "tok-verify"),
                "expires_at": EXPIRES,
            },
        )
        assert len(ctx.after_commit) == 1  # one wake-up per request, however many messages
        await asyncio.sleep(0.2)
        assert smtp.received == []  # nothing leaves before the commit
        await ctx.finish(commit=True)
        await eventually(lambda: len(smtp.received) == 2, what="two messages delivered")
        await asyncio.sleep(0.3)  # several more polls: nothing is sent again

    assert len(smtp.received) == 2
    got = next(r for r in smtp.received if r.rcpt_tos == ["alice@example.com"])
    m = got.message
    row = next(r for r in outbox(database_url) if r[1] == "alice@example.com")
    assert row[2] == "sent"
    assert row[3] == 1
    assert row[8] is not None
    assert row[6] is None
    assert m["Message-ID"] == row[4]
    assert m["From"] == SENDER
    assert got.mail_from == "no-reply@portcullis.test"
    assert m["To"] == "alice@example.com"
    assert m["Subject"] == "You are invited to join Acme on Portcullis"
    assert m["Auto-Submitted"] == "auto-generated"
    assert email.utils.parsedate_to_datetime(m["Date"]).tzinfo is not None
    assert m.get_content_type() == "multipart/alternative"
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    link = f"{APP_URL}/invitations/accept#token={token}"
    assert link in text
    assert f'href="{link}"' in html
    assert "Olivia Owner" in text
    assert "Portcullis" in text
    assert "Portcullis" in html

    # what tests of other features read
    mail = await last_mail(database_url, "Alice@Example.com", "invitation")
    assert token_in(mail) == token
    assert mail.status == "sent"
    assert mail.subject == m["Subject"]


async def test_rolled_back_mail_is_neither_kept_nor_sent(database_url: str, signing_key: str, smtp: SmtpSink) -> None:
    app = create_app(mail_settings(database_url, signing_key, f"smtp://127.0.0.1:{smtp.port}"))
    async with running(app):
        services = app.state.services
        ctx = RequestContext(services, anonymous())
        await send_mail(
            ctx, to="alice@example.com", template="password_reset", variables=reset_variables(services.mail, "tok")
        )
        await ctx.finish(commit=False)
        services.mail.wake()
        await asyncio.sleep(0.3)
    assert smtp.received == []
    assert outbox(database_url) == []


async def test_queue_refuses_an_unknown_template_or_a_missing_variable(database_url: str, signing_key: str) -> None:
    mailer = build_mailer(mail_settings(database_url, signing_key, None))
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            with pytest.raises(ValueError, match="unknown mail template"):
                await queue_mail(session, mailer, to="a@example.com", template="sso_link", variables={})
            with pytest.raises(Exception, match="reset_url"):
                await queue_mail(
                    session,
                    mailer,
                    to="a@example.com",
                    template="password_reset",
                    variables={"expires_at": EXPIRES, "client_ip": None},
                )
            with pytest.raises(ValueError, match="change"):
                await queue_mail(
                    session,
                    mailer,
                    to="a@example.com",
                    template="mfa_changed",
                    variables={"change": "whatever", "at": EXPIRES},
                )
            with pytest.raises(ValueError, match="recipient"):
                await queue_mail(
                    session,
                    mailer,
                    to="a@example.com\r\nBcc: b@example.com",
                    template="email_in_use",
                    variables={"at": EXPIRES},
                )
    finally:
        await db.dispose()
    assert outbox(database_url) == []


async def test_send_mail_without_a_mailer_is_a_clear_error(database_url: str, signing_key: str) -> None:
    app = create_app(mail_settings(database_url, signing_key, None))
    services = app.state.services
    services.mail = None
    ctx = RequestContext(services, anonymous())
    with pytest.raises(MailNotConfigured, match=r"Services\.mail"):
        await send_mail(ctx, to="a@example.com", template="email_in_use", variables={"at": EXPIRES})
    await ctx.finish(commit=False)
    await services.db.dispose()


async def test_templates_escape_html_and_keep_values_on_one_line(database_url: str, signing_key: str) -> None:
    mailer = build_mailer(mail_settings(database_url, signing_key, None))
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await queue_mail(
                session,
                mailer,
                to="a@example.com",
                template="new_sign_in",
                variables={
                    "at": EXPIRES,
                    "client_ip": "198.51.100.4",
                    "organization_name": "Evil <b>Corp</b>\n\nhttps://x.test",
                    "user_agent": "<script>alert(1)</script>",
                    "method": "password",
                },
            )
        async with db.transaction() as session:
            mail = (await read_mailbox(session, mailer))[0]
    finally:
        await db.dispose()
    assert "<script>" not in mail.html
    assert "&lt;script&gt;" in mail.html
    assert "Evil &lt;b&gt;Corp&lt;/b&gt; https://x.test" in mail.html
    assert "Evil <b>Corp</b> https://x.test" in mail.text
    assert "\nhttps://x.test" not in mail.text
    assert mail.subject == "New sign-in to Evil <b>Corp</b> https://x.test on Portcullis"
    assert mail.status == "mailbox"


# -- the local mailbox ------------------------------------------------------------------------------------


async def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str, *args: str, **env: str
) -> tuple[int, str, str]:
    """`portcullis ARGS` through its `main`, with the environment a shell would give it (`env`: more
    settings, without their prefix), in a thread: the command runs its own event loop."""
    for name in [k for k in os.environ if k.startswith("PORTCULLIS_")]:
        monkeypatch.delenv(name)
    for name, value in {"ENV": "test", "DATABASE_URL": database_url, **env}.items():
        monkeypatch.setenv(f"PORTCULLIS_{name}", value)
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(cli_main, list(args))
    except SystemExit as exc:  # what the interpreter would print and exit with
        code, message = (1, str(exc.code)) if isinstance(exc.code, str) else (int(exc.code or 0), "")
        print(message, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


async def test_without_smtp_mail_is_kept_in_the_mailbox_and_the_cli_prints_it(
    database_url: str,
    signing_key: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(mail_settings(database_url, signing_key, None))
    assert app.state.mail_delivery is None
    async with running(app):
        services = app.state.services
        ctx = RequestContext(services, anonymous())
        await send_mail(
            ctx,
            to="carol@example.com",
            template="password_reset",
            variables=reset_variables(services.mail, "tok-mailbox"),
        )
        await ctx.finish(commit=True)
    assert [r.getMessage() for r in caplog.records].count("mail_kept_in_local_mailbox") == 1
    (row,) = outbox(database_url)
    assert row[2] == "mailbox"

    code, out, err = await cli(monkeypatch, capsys, database_url, "mail", "list")
    assert code == 0, err
    (line,) = out.splitlines()
    assert line.startswith(row[0])
    assert "  mailbox  carol@example.com  password_reset  Reset your Portcullis password" in line
    code, out, err = await cli(monkeypatch, capsys, database_url, "mail", "list", "--to", "dave@example.com")
    assert (code, out) == (0, "")

    code, out, err = await cli(monkeypatch, capsys, database_url, "mail", "show", row[0])
    assert code == 0, err
    assert "To: carol@example.com" in out
    assert f"Message-ID: {row[4]}" in out
    assert "Subject: Reset your Portcullis password" in out
    assert f"{APP_URL}/reset-password#token=tok-mailbox" in out
    code, out, err = await cli(monkeypatch, capsys, database_url, "mail", "show", "no-such-id")
    assert code == 1
    assert "no message" in err


async def test_cli_never_prints_the_smtp_password(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """C-095: neither a refused SMTP URL nor a working one puts its password in the command's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            "PORTCULLIS_ENV": "test",
            "PORTCULLIS_DATABASE_URL": sqlite_url,
            "PYTHONPATH": str(ROOT),
            "PORTCULLIS_SMTP_URL": "smtp://mailer:hunter2-secret@mail.example.com?starttls=maybe",
            "PORTCULLIS_MAIL_FROM": "no-reply@example.com",
        }
    )
    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "mail", "list"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0
    assert "PORTCULLIS_SMTP_URL" in bad.stderr
    assert "starttls" in bad.stderr
    assert "hunter2" not in bad.stderr + bad.stdout

    code, out, err = await cli(
        monkeypatch, capsys, sqlite_url, "mail", "list", SMTP_URL="smtps://mailer:hunter2-secret@mail.example.com"
    )
    assert code == 1
    assert "PORTCULLIS_MAIL_FROM is required" in err
    assert "hunter2" not in out + err
    code, out, err = await cli(
        monkeypatch,
        capsys,
        sqlite_url,
        "mail",
        "list",
        MAIL_FROM="no-reply@example.com",
        SMTP_URL="smtps://mailer:hunter2-secret@mail.example.com",
    )
    assert code == 0, err
    assert "hunter2" not in out + err


# -- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://relay.example.com", ("relay.example.com", 587, False, "auto", None)),
        ("smtp://relay.example.com:25?starttls=off", ("relay.example.com", 25, False, "off", None)),
        ("smtp://relay.example.com?starttls=require", ("relay.example.com", 587, False, "require", None)),
        ("smtps://u%40x:p%3Ass@mail.example.com", ("mail.example.com", 465, True, "off", "u@x")),
        # a password is never sent in clear: with credentials, auto means require
        ("smtp://user:pw@mail.example.com", ("mail.example.com", 587, False, "require", "user")),
        ("smtp://user:pw@127.0.0.1:2525?starttls=off", ("127.0.0.1", 2525, False, "off", "user")),
    ],
)
def test_smtp_url_forms(url: str, expected: tuple[Any, ...]) -> None:
    s = parse_smtp_url(url)
    assert (s.host, s.port, s.implicit_tls, s.starttls, s.username) == expected
    assert "pw" not in repr(s)
    assert "p:ss" not in repr(s)


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "smtp://",
        "smtp://h.example:99999",
        "smtp://h.example/path",
        "smtp://h.example?tls=1",
        "smtp://h.example?starttls=maybe",
        "smtps://h.example?starttls=require",
        "smtp://user:secret-pw@mail.example.com?starttls=off",
        "smtp://:secret-pw@mail.example.com",
    ],
)
def test_bad_smtp_urls_are_refused_naming_the_variable_not_the_password(url: str, signing_key: str) -> None:
    """C-095: the refusal names the variable and what is wrong, never the URL's password."""
    with pytest.raises(UnusableSettingError) as exc:
        make_settings("sqlite:///./unused.db", signing_key, smtp_url=url, mail_from="a@example.com")
    assert "PORTCULLIS_SMTP_URL" in str(exc.value)
    assert "secret-pw" not in str(exc.value)


def test_mail_settings_defaults_and_requirements(signing_key: str) -> None:
    plain = make_settings("sqlite:///./unused.db", signing_key)
    assert plain.smtp is None
    assert plain.links_url == plain.public_url
    mailer = build_mailer(plain)
    assert not mailer.smtp_configured
    assert mailer.product_name == "Portcullis"
    assert mailer.link("/verify-email", "a/b+c") == "http://127.0.0.1:8000/verify-email#token=a%2Fb%2Bc"
    with pytest.raises(UnusableSettingError, match="PORTCULLIS_MAIL_FROM"):
        make_settings("sqlite:///./unused.db", signing_key, smtp_url="smtp://relay.example.com")
    with pytest.raises(ValueError, match="PORTCULLIS_MAIL_FROM"):
        make_settings("sqlite:///./unused.db", signing_key, mail_from="not an address")
    with pytest.raises(ValueError, match="PORTCULLIS_APP_URL"):
        make_settings("sqlite:///./unused.db", signing_key, app_url="app.example.com")
    custom = make_settings(
        "sqlite:///./unused.db", signing_key, app_url="https://example.com/app/", mail_product_name="Acme Gate"
    )
    assert build_mailer(custom).link("/reset-password", "t") == "https://example.com/app/reset-password#token=t"
    assert build_mailer(custom).from_address == "Acme Gate <no-reply@localhost>"


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = DeliveryPolicy(retry_seconds=30, retry_max_seconds=3600)
    lows = [policy.backoff(n, draw=lambda: 0.0) for n in range(1, 10)]
    highs = [policy.backoff(n, draw=lambda: 1.0) for n in range(1, 10)]
    assert lows[:4] == [15, 30, 60, 120]
    assert highs[:4] == [30, 60, 120, 240]
    assert highs[-1] == 3600
    assert lows[-1] == 1800
    assert all(highs[i] <= lows[i + 1] for i in range(5))  # the jittered delay still grows
    assert policy.lease_seconds > policy.timeout_seconds


# -- failures -------------------------------------------------------------------------------------------------


async def test_smtp_down_at_commit_then_sent_once_when_it_comes_up(database_url: str, signing_key: str) -> None:
    port = free_port()  # nothing listens here yet
    app = create_app(mail_settings(database_url, signing_key, f"smtp://127.0.0.1:{port}"))
    async with running(app):
        (message_id,) = await queue(app, ["erin@example.com"])
        row = await eventually(lambda: [r for r in outbox(database_url) if r[3] >= 2], what="two failed attempts")
        assert row[0][2] == "pending"
        assert row[0][7].startswith("Error connecting")
        with smtp_server(port) as sink:
            await eventually(lambda: sink.received, what="delivery after the server came up")
            await asyncio.sleep(0.3)
            assert sink.ids() == [message_id]
    (row,) = outbox(database_url)
    assert row[2] == "sent"
    assert row[7] is None


async def test_two_workers_and_a_server_refusing_for_a_while_send_each_message_once(
    database_url: str, signing_key: str
) -> None:
    with smtp_server() as sink:
        sink.refuse_next = 15
        url = f"smtp://127.0.0.1:{sink.port}"
        one = create_app(mail_settings(database_url, signing_key, url))
        two = create_app(mail_settings(database_url, signing_key, url))
        async with running(one), running(two):
            ids = await queue(one, [f"user{i}@example.com" for i in range(20)])
            two.state.services.mail.wake()
            await eventually(lambda: len(sink.received) >= 20, what="twenty messages delivered")
            await asyncio.sleep(0.3)
        assert sorted(sink.ids()) == sorted(ids)  # each exactly once
        assert len(sink.attempts) == 20 + 15
    rows = outbox(database_url)
    assert {r[2] for r in rows} == {"sent"}
    assert sum(r[3] for r in rows) == 35


async def test_retries_back_off_then_the_message_is_given_up(
    database_url: str, signing_key: str, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """Backoff grows between attempts; after the last one the message is `failed`. C-095: the logs hold
    neither the message's token nor its recipient."""
    smtp.refuse["frank@example.com"] = "451 4.2.0 mailbox busy"
    app = create_app(
        mail_settings(
            database_url,
            signing_key,
            f"smtp://127.0.0.1:{smtp.port}",
            mail_retry_seconds=0.2,
            mail_retry_max_seconds=10,
            mail_max_attempts=4,
        )
    )
    async with running(app):
        await queue(app, ["frank@example.com"])
        seen: list[datetime] = []

        def failed() -> bool:
            (row,) = outbox(database_url)
            if row[2] == "pending" and row[5] not in seen and row[3] > 0:
                seen.append(row[5])
            return bool(row[2] == "failed")

        await eventually(failed, what="given up")
    times = [t for t, address in smtp.attempts if address == "frank@example.com"]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[2] > gaps[0]
    assert gaps[0] >= 0.1
    assert seen == sorted(seen)
    assert len(seen) >= 2
    (row,) = outbox(database_url)
    assert row[3] == 4
    assert row[7] == "451 4.2.0 mailbox busy"
    (record,) = [r for r in caplog.records if r.getMessage() == "mail_failed"]
    assert record.reason == "max_attempts"
    assert record.attempts == 4
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "tok-0" not in logged
    assert "frank@example.com" not in logged


async def test_a_permanent_refusal_fails_at_once_and_the_others_still_go(
    database_url: str, signing_key: str, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.refuse["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user"
    app = create_app(mail_settings(database_url, signing_key, f"smtp://127.0.0.1:{smtp.port}"))
    async with running(app):
        ids = await queue(app, ["nobody@example.com", "grace@example.com"])
        await eventually(lambda: {r[2] for r in outbox(database_url)} == {"failed", "sent"}, what="both settled")
        await asyncio.sleep(0.2)
    assert smtp.ids() == [ids[1]]
    failed = next(r for r in outbox(database_url) if r[1] == "nobody@example.com")
    assert failed[3] == 1
    assert failed[7] == "550 5.1.1 <nobody@example.com>: no such user"
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "nobody@example.com" not in logged
    assert "550 5.1.1 <<recipient>>: no such user" in logged
    assert [r.reason for r in caplog.records if r.getMessage() == "mail_failed"] == ["refused"]  # type: ignore[attr-defined]


# -- TLS and authentication ---------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis test smtp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def sqlite_mail(sqlite_url: str) -> Iterator[str]:
    """The session's SQLite database, its outbox emptied afterwards."""
    try:
        yield sqlite_url
    finally:
        sql(sqlite_url, "DELETE FROM mail_outbox")


@pytest.fixture
def server_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server certificate the gateway trusts (through SSL_CERT_FILE, as an operator's private CA would be)."""
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def authenticator(user: bytes, password: bytes) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (user, password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


async def test_starttls_and_authentication(
    sqlite_mail: str, signing_key: str, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """STARTTLS and AUTH PLAIN with a password that needs percent-encoding; a wrong password leaves the
    message pending with the server's 535. C-095: no log line holds either password."""
    with smtp_server(
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator(b"mailer", b"s3cret pw"),
    ) as sink:
        app = create_app(mail_settings(sqlite_mail, signing_key, f"smtp://mailer:s3cret%20pw@127.0.0.1:{sink.port}"))
        async with running(app):
            (message_id,) = await queue(app, ["heidi@example.com"])
            await eventually(lambda: sink.received, what="delivered over STARTTLS")
        (got,) = sink.received
        assert got.tls
        assert got.login == b"mailer"
        assert got.message["Message-ID"] == message_id

        wrong = create_app(mail_settings(sqlite_mail, signing_key, f"smtp://mailer:not-the-pw@127.0.0.1:{sink.port}"))
        async with running(wrong):
            await queue(wrong, ["ivan@example.com"])
            row = await eventually(
                lambda: [r for r in outbox(sqlite_mail) if r[1] == "ivan@example.com" and r[7]],
                what="authentication refused",
            )
        assert row[0][2] == "pending"
        assert row[0][7].startswith("535")
        assert len(sink.received) == 1
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "not-the-pw" not in logged
    assert "s3cret" not in logged


async def test_implicit_tls(sqlite_mail: str, signing_key: str, server_tls: ssl.SSLContext) -> None:
    with smtp_server(ssl_context=server_tls) as sink:
        app = create_app(mail_settings(sqlite_mail, signing_key, f"smtps://127.0.0.1:{sink.port}"))
        async with running(app):
            (message_id,) = await queue(app, ["judy@example.com"])
            await eventually(lambda: sink.received, what="delivered over TLS")
        assert sink.ids() == [message_id]


async def test_required_starttls_never_falls_back_to_plain(sqlite_mail: str, signing_key: str, smtp: SmtpSink) -> None:
    app = create_app(mail_settings(sqlite_mail, signing_key, f"smtp://127.0.0.1:{smtp.port}?starttls=require"))
    async with running(app):
        await queue(app, ["kim@example.com"])
        row = await eventually(lambda: [r for r in outbox(sqlite_mail) if r[7]], what="refused to go plain")
        await asyncio.sleep(0.2)
    assert smtp.received == []
    assert row[0][2] == "pending"
    assert "STARTTLS" in row[0][7]


# -- real gateway processes on PostgreSQL, killed ---------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"gateway not ready: {log.read_text()[-2000:]}"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def process_env(database_url: str, signing_key: str, smtp_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        {
            "PORTCULLIS_ENV": "test",
            "PORTCULLIS_DATABASE_URL": database_url,
            "PORTCULLIS_SIGNING_KEY": signing_key,
            "PORTCULLIS_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "PORTCULLIS_MAIL_FROM": SENDER,
            "PORTCULLIS_APP_URL": APP_URL,
            "PORTCULLIS_MAIL_POLL_SECONDS": "0.05",
            "PORTCULLIS_MAIL_RETRY_SECONDS": "0.1",
            "PORTCULLIS_MAIL_RETRY_MAX_SECONDS": "0.2",
            "PORTCULLIS_SMTP_TIMEOUT_SECONDS": "2",
            "PYTHONPATH": str(ROOT),
            **{f"PORTCULLIS_{k}": v for k, v in extra.items()},
        }
    )
    return env


async def queue_from_outside(database_url: str, signing_key: str, recipients: list[str]) -> list[str]:
    """Commit messages as a request of some gateway process would (the same table, key and Message-IDs)."""
    mailer = build_mailer(mail_settings(database_url, signing_key, "smtp://127.0.0.1:25"))
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            rows = [
                await queue_mail(
                    session, mailer, to=to, template="password_reset", variables=reset_variables(mailer, f"tok-{i}")
                )
                for i, to in enumerate(recipients)
            ]
    finally:
        await db.dispose()
    return [row.message_id for row in rows]


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_gateway_killed_between_commit_and_send_and_mid_send_sends_each_once_after_restart(
    postgresql_url: str, signing_key: str, tmp_path: Path
) -> None:
    """A gateway process on PostgreSQL claims message A and hangs on a server that never greets; message B
    commits meanwhile; the process is killed (SIGKILL): A's lease stays, B was never tried. With the
    SMTP server up and a new process started, B goes at once, A once its lease has lapsed, each once."""
    port = free_port()
    held: list[asyncio.StreamWriter] = []
    stalling = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", port)
    env = process_env(postgresql_url, signing_key, port, SMTP_TIMEOUT_SECONDS="1.5")
    try:
        with gateway_process(env, tmp_path / "first.log") as first:
            (a,) = await queue_from_outside(postgresql_url, signing_key, ["leo@example.com"])
            claimed = await eventually(
                lambda: [r for r in outbox(postgresql_url) if r[6] is not None], what="A claimed by the first process"
            )
            (b,) = await queue_from_outside(postgresql_url, signing_key, ["mia@example.com"])
            first.send_signal(signal.SIGKILL)
            first.wait()
        lease_until = claimed[0][6]
        rows = {r[1]: r for r in outbox(postgresql_url)}
        assert rows["leo@example.com"][6] == lease_until  # the dead process's claim is still there
        assert rows["mia@example.com"][2:4] == ("pending", 0)
        stalling.close()
        for writer in held:
            writer.close()
        await stalling.wait_closed()
        with smtp_server(port) as sink, gateway_process(env, tmp_path / "second.log"):
            await eventually(lambda: len(sink.received) >= 2, what="both sent by the restarted gateway")
            await asyncio.sleep(0.5)
        assert sorted(sink.ids()) == sorted([a, b])
        sent_a = next(r for r in sink.received if r.message["Message-ID"] == a)
        assert sent_a.at >= lease_until
        rows = {r[1]: r for r in outbox(postgresql_url)}
        assert (rows["leo@example.com"][2], rows["leo@example.com"][3]) == ("sent", 2)
        assert (rows["mia@example.com"][2], rows["mia@example.com"][3]) == ("sent", 1)
    finally:
        stalling.close()
        sql(postgresql_url, "DELETE FROM mail_outbox")


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_gateway_processes_and_a_refusing_server_send_each_message_once(
    postgresql_url: str, signing_key: str, tmp_path: Path
) -> None:
    with smtp_server() as sink:
        sink.refuse_next = 10
        env = process_env(postgresql_url, signing_key, sink.port)
        try:
            with gateway_processes(2, env, tmp_path):
                ids = await queue_from_outside(postgresql_url, signing_key, [f"u{i}@example.com" for i in range(20)])
                await eventually(lambda: len(sink.received) >= 20, what="twenty delivered")
                await asyncio.sleep(0.5)
            assert sorted(sink.ids()) == sorted(ids)
            assert len(sink.attempts) == 30
            assert {r[2] for r in outbox(postgresql_url)} == {"sent"}
        finally:
            sql(postgresql_url, "DELETE FROM mail_outbox")
