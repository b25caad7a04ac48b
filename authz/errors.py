"""The contract's error vocabulary: a machine code plus a message safe to show the caller."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    OPERATION_TOO_COMPLEX = "OPERATION_TOO_COMPLEX"
    INTERNAL = "INTERNAL"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    ADDRESS_BLOCKED = "ADDRESS_BLOCKED"
    FRESH_AUTH_REQUIRED = "FRESH_AUTH_REQUIRED"


class GatewayError(Exception):
    """An expected refusal: never masked, never a 500."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extensions = extensions


class Unauthenticated(GatewayError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(GatewayError):
    code = ErrorCode.FORBIDDEN


class NotFound(GatewayError):
    code = ErrorCode.NOT_FOUND


class BadUserInput(GatewayError):
    code = ErrorCode.BAD_USER_INPUT


class Conflict(GatewayError):
    code = ErrorCode.CONFLICT


INVALID_CREDENTIALS = "Invalid credentials."


class QuotaExceeded(GatewayError):
    code = ErrorCode.QUOTA_EXCEEDED


class AddressBlocked(GatewayError):
    """The caller's address is blocked (by an operator, the organization, or an abuse signal): 403 at the edge."""

    code = ErrorCode.ADDRESS_BLOCKED


class FreshAuthRequired(GatewayError):
    """A sensitive mutation with a sign-in older than the organization's fresh-authentication window: 403."""

    code = ErrorCode.FRESH_AUTH_REQUIRED


class UpstreamUnavailable(GatewayError):
    """An upstream that did not answer in time, refused the connection, or whose circuit is open."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE


class UpstreamError(GatewayError):
    """An upstream's own error, or an answer the gateway cannot use (masked unless the upstream exposes errors)."""

    code = ErrorCode.UPSTREAM_ERROR


class OperationTooComplex(GatewayError):
    """An operation over one of its plan's static limits, refused before anything executes."""

    code = ErrorCode.OPERATION_TOO_COMPLEX

    def __init__(self, limit: str, maximum: int, measured: int) -> None:
        super().__init__(
            f"The operation's {limit.replace('_', ' ')} is {measured}; this plan allows at most {maximum}.",
            limit=limit,
            maximum=maximum,
            measured=measured,
        )
