"""The access log: one JSON line per request, written when its answer has been sent, in batches.

A line is made with orjson as the request ends and kept; the lines made during one turn of the event loop go
out together at the start of the next, in one write to standard error (where the JSON logs of
gateway/logs.py go), as nginx's `access_log ... buffer=` does. Under load one write carries the lines of every
request that ended in that turn; an idle gateway writes each line at once. The lines still waiting when the
application stops are written by its lifespan. A line holds the path without its query (which may carry a
secret), the caller's kind and tenant by id, never a credential (docs/observability.md, "Access log").
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from starlette.types import Scope

LOGGER = "portcullis.access"
# a burst larger than this in one turn is written without waiting for the turn to end
MAX_PENDING_LINES = 1024


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: standard error as it is when a batch is written
        self._pending: list[bytes] = []

    def record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        principal = state.get("principal")
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": LOGGER,
            "event": "request",
        }
        trace_id = state.get("trace_id")
        if trace_id is not None:
            entry["trace_id"] = trace_id
        entry["method"] = scope["method"]
        entry["path"] = scope["path"]
        entry["status"] = status
        entry["duration_ms"] = round(seconds * 1000, 2)
        entry["request_id"] = state.get("request_id")
        entry["principal"] = principal.kind.value if principal is not None else "none"
        entry["tenant"] = principal.organization_id if principal is not None else None
        entry["operation"] = state.get("operation")
        pending = self._pending
        pending.append(orjson.dumps(entry))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: nothing would write it later
                self.flush()
        elif len(pending) >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines in one write. A stream that fails (closed, a broken pipe) loses them, never
        the request that made them."""
        if not self._pending:
            return
        batch = b"\n".join(self._pending) + b"\n"
        self._pending.clear()
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(batch.decode())
            stream.flush()
        except (OSError, ValueError):
            pass
