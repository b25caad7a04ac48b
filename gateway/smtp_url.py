"""`PORTCULLIS_SMTP_URL`: what it may say, parsed (gateway/settings.py reads it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class SmtpServer:
    """`PORTCULLIS_SMTP_URL`, parsed. `starttls`: `auto` (upgrade when the server offers it), `require`,
    or `off` (plain; a loopback relay or a test server)."""

    host: str
    port: int
    implicit_tls: bool
    starttls: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


STARTTLS_MODES = ("auto", "require", "off")


def parse_smtp_url(url: str) -> SmtpServer:
    """`smtp://[user:pass@]host[:port][?starttls=auto|require|off]` or `smtps://[user:pass@]host[:port]`.

    ValueError names what is wrong and never repeats the URL. A password is never sent in clear: with
    credentials, `auto` means `require`, and `off` is refused unless the server is on a loopback address."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise ValueError("the scheme must be smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("a host is required (smtp://host:port)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("the URL takes no path: smtp://user:pass@host:port?starttls=require")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("the query is malformed") from None
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (the only option is starttls)")
    modes = query.get("starttls", [])
    if len(modes) > 1:
        raise ValueError("starttls is given more than once")
    if modes and scheme == "smtps":
        raise ValueError("starttls applies to smtp:// only; smtps:// is TLS from the first byte")
    starttls = modes[0].lower() if modes else "auto"
    if starttls not in STARTTLS_MODES:
        raise ValueError("starttls is one of auto, require, off")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ValueError("a password needs a user name (smtp://user:pass@host)")
    host = parts.hostname
    if username and scheme == "smtp":
        if starttls == "auto":
            starttls = "require"
        elif starttls == "off" and not _loopback(host):
            raise ValueError(
                "credentials are never sent unencrypted: use smtps://, starttls=require, or a "
                "relay on a loopback address"
            )
    return SmtpServer(
        host=host,
        port=port or (465 if scheme == "smtps" else 587),
        implicit_tls=scheme == "smtps",
        starttls="off" if scheme == "smtps" else starttls,
        username=username,
        password=password,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
