"""Fixtures shared by the schema tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.saml_idp import TestIdp


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdp]:
    """The pysaml2 identity provider (tests/saml_idp.py), one per test module."""
    server = TestIdp()
    yield server
    server.close()
