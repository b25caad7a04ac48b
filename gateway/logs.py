"""Structured logs: one JSON object per line, control characters escaped by the encoder, no secrets.

Nothing logs a password, a token or a key; records carry ids (request, user, session) only. A line written
while a request is handled carries its trace id (`trace_id`, gateway/tracing.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from store.telemetry import current_trace_id

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        trace_id = current_trace_id.get()
        if trace_id is not None:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger("portcullis")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = True
    # Database drivers trace statements with their parameters (password hashes, token hashes) at
    # DEBUG: they never log below WARNING, whatever the root level.
    for name in ("aiosqlite", "sqlalchemy.engine", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)
