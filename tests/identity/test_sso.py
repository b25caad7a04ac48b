"""`safe_return_to`: where the browser goes after a single sign-on, OIDC or SAML (C-051)."""

from __future__ import annotations

import pytest

from identity.sso import MAX_RETURN_TO, safe_return_to


@pytest.mark.parametrize(
    "value",
    [
        "/",
        "/reports",
        "/reports?month=11",
        "/app/x?next=%2Fsettings",  # an encoded slash in the query is an ordinary value
        "/r%C3%A9sum%C3%A9",
        "/" + "a" * (MAX_RETURN_TO - 1),
    ],
)
def test_a_relative_path_is_kept(value: str) -> None:
    assert safe_return_to(value, ["/"]) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        # absolute URLs
        "https://evil.com/",
        "http://evil.com",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "evil.com/reports",
        # scheme-relative
        "//evil.com",
        "//evil.com/reports",
        "///evil.com",
        # backslashes, which browsers read as slashes
        "/\\evil.com",
        "\\\\evil.com",
        "/a\\b",
        # encoded slashes and backslashes in the path, and encoded dot segments
        "/%2F%2Fevil.com",
        "/%2f%2fevil.com",
        "/%5Cevil.com",
        "/a/%2e%2e/b",
        "/a/../b",
        "/./a",
        # control characters and spaces, raw or leading
        "/ok\r\nSet-Cookie: x=1",
        "/a\tb",
        "/a\x00b",
        "/a\x7fb",
        " /reports",
        "\x01//evil.com",
        "/a b",
        # too long
        "/" + "a" * MAX_RETURN_TO,
    ],
)
def test_anything_else_falls_back(value: str | None) -> None:
    assert safe_return_to(value, ["/"]) == "/"


def test_allowed_prefixes() -> None:
    allowed = ["/app", "/reports/"]
    assert safe_return_to("/app", allowed) == "/app"
    assert safe_return_to("/app/x?y=1", allowed) == "/app/x?y=1"
    assert safe_return_to("/reports/11", allowed) == "/reports/11"
    assert safe_return_to("/reports", allowed) == "/app"  # not under "/reports/"
    assert safe_return_to("/application", allowed) == "/app"
    assert safe_return_to("/admin", allowed) == "/app"
    assert safe_return_to("//evil.com/app", allowed) == "/app"
