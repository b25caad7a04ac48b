"""The audit streams' settings (docs/configuration.md), a group of `Settings` (gateway/settings.py) kept in
its own module: `Settings` inherits them, and they are read with the rest, as `PORTCULLIS_AUDIT_STREAM_*`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class AuditStreamSettings(BaseSettings):
    # how often a process looks for streams with entries to send
    audit_stream_poll_seconds: float = Field(default=2.0, ge=0.01, le=3600)
    # one attempt (a batch's request, or a syslog connection with its batch) is cut off after this
    audit_stream_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # entries per batch
    audit_stream_batch_size: int = Field(default=100, ge=1, le=1000)
    # after a failed attempt: the first delay, doubled each failure up to the maximum, with jitter
    audit_stream_retry_seconds: float = Field(default=5.0, ge=0.01, le=86_400)
    audit_stream_retry_max_seconds: float = Field(default=600.0, ge=0.01, le=86_400)
    # a stream failing this many attempts in a row is disabled (a permanent error disables it at once)
    audit_stream_disable_after_failures: int = Field(default=50, ge=1, le=100_000)
    # a PEM file of CA certificates trusted for https and syslog+tls destinations, besides the system's
    audit_stream_ca_file: str | None = None
