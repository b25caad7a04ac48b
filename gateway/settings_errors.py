"""Settings problems as an operator reads them: each names its environment variable, says what is wrong and what
a valid value looks like, and never repeats the value (it may be a secret)."""

from __future__ import annotations

import types
import typing
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

PREFIX = "PORTCULLIS_"

# what a valid value looks like, where the type alone does not say it
HINTS = {
    "database_url": "a database URL, like sqlite:///./portcullis.db or postgresql+psycopg://user:password@host/db",
    "migration_database_url": "a PostgreSQL URL of the tables' owner, like postgresql+psycopg://owner:password@host/db",
    "redis_url": "a Redis URL, like redis://127.0.0.1:6379/0",
    "trusted_proxies": "addresses or CIDR ranges, comma-separated, like 10.0.0.0/8,192.168.1.10",
    "trace_trusted_callers": "addresses or CIDR ranges, comma-separated, like 10.0.0.0/8,192.168.1.10",
    "block_allowlist": "addresses or CIDR ranges, comma-separated, like 10.0.0.0/8,192.168.1.10",
    "block_durations_seconds": "positive whole numbers of seconds, comma-separated, like 900,3600,86400",
    "public_url": "an origin, like https://gateway.example.com",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _unwrapped(annotation: object) -> object:
    """`X | None` is X; `Annotated[X, ...]` is X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrapped(args[0])
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrapped(args[0])
    return annotation


def _bounds(info: FieldInfo) -> str:
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    found = []
    for item in info.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return ", ".join(found)


def valid_value(field: str, info: FieldInfo) -> str:
    """What a valid value of the field looks like, in words."""
    if field in HINTS:
        return HINTS[field]
    kind = _unwrapped(info.annotation)
    origin = typing.get_origin(kind)
    text: str
    if kind is bool:
        text = "true or false"
    elif isinstance(kind, type) and issubclass(kind, Enum):
        text = "one of " + ", ".join(str(m.value) for m in kind)
    elif kind is int:
        text = "a whole number"
    elif kind is float:
        text = "a number"
    elif kind is SecretStr:
        text = "a secret"
    elif kind is Path:
        text = "a file path"
    elif origin is list:
        text = "a comma-separated list"
    else:
        text = "text"
    bounds = _bounds(info)
    if bounds:
        text += f" {bounds}"
    default = info.default
    if kind is not SecretStr and isinstance(default, (int, float, str, Enum)):
        shown = default.value if isinstance(default, Enum) else default
        text += f" (default {str(shown).lower() if isinstance(shown, bool) else shown})"
    return text


def explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """Every problem of `exc`, one a line, by environment variable."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = error["loc"]
        message = str(error["msg"]).removeprefix("Value error, ")
        field = str(loc[0]) if loc else ""
        info = model.model_fields.get(field)
        if info is None:
            lines.append(message)
            continue
        name = env_name(field)
        if message.startswith(name):  # the field's own validator said it all
            lines.append(message)
            continue
        message = message[:1].lower() + message[1:] if message[1:2].islower() else message
        lines.append(f"{name}: {message}; a valid value is {valid_value(field, info)}")
    return "invalid configuration:\n  - " + "\n  - ".join(lines)
