"""Shared by the operation-limit tests: a resolver spy and the refusal every limit answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from resolvers import organizations as organizations_service
from resolvers import users as users_service


@pytest.fixture
def resolver_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Records every call of the resolvers the limit tests select (with the request context)."""
    calls: list[tuple[str, Any]] = []
    for module, name in (
        (organizations_service, "get_organization"),
        (organizations_service, "list_children"),
        (users_service, "get_viewer"),
    ):
        original = getattr(module, name)

        def spy(ctx: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append((_name, ctx.principal))
            return _original(ctx, *args)

        monkeypatch.setattr(module, name, spy)
    return calls


def assert_refused(r: httpx.Response, limit: str, maximum: int, measured: int | None = None) -> dict[str, Any]:
    """400, no `data`, one OPERATION_TOO_COMPLEX error naming the limit, its maximum and the measure."""
    assert r.status_code == 400, r.text
    body: dict[str, Any] = r.json()
    assert "data" not in body
    [error] = body["errors"]
    extensions = error["extensions"]
    assert extensions["code"] == "OPERATION_TOO_COMPLEX"
    assert extensions["limit"] == limit
    assert extensions["maximum"] == maximum
    if measured is not None:
        assert extensions["measured"] == measured
    assert extensions["measured"] > maximum
    assert set(extensions) == {"code", "limit", "maximum", "measured"}
    return body
