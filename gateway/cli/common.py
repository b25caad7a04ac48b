"""What every command shares: the settings, the gateway's services, and the operator's request context."""

from __future__ import annotations

import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gateway.settings import InsecureSettingsError, Settings

if TYPE_CHECKING:
    from resolvers.deps import RequestContext, Services


def load_settings() -> Settings:
    try:
        return Settings.load()
    except (InsecureSettingsError, ValidationError) as exc:
        sys.exit(f"portcullis: {exc}")


def check_signing_keys(settings: Settings) -> None:
    """A signing key that does not load (not a PEM, not RSA, under 2048 bits, an unreadable file)
    stops the command with one line, before any worker starts and fails with a traceback."""
    from identity.tokens import KeyRing

    try:
        KeyRing(*settings.signing_key_pems())
    except (OSError, ValueError, TypeError) as exc:
        sys.exit(f"portcullis: refusing to start: unusable signing key: {exc}")


def operator_name() -> str:
    """Who runs the command: the actor of its audit entries."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


@contextlib.asynccontextmanager
async def command_services(settings: Settings) -> AsyncIterator[Services]:
    """The gateway's own services, for one command: the same database, mailer and revocation bus (Redis in
    shared mode, so that running gateways hear at once what the command changed)."""
    from gateway.app import build_services

    services = build_services(settings)
    try:
        yield services
    finally:
        if services.address_blocks is not None:
            # a block the command changed has the list reloaded in this process too: that read finishes
            # before the database goes, not cancelled half-way when the command's event loop closes
            await services.address_blocks.stop()
        if services.redis is not None:
            await services.redis.aclose()
        await services.db.dispose()


def as_operator(services: Services, organization_id: str | None = None) -> RequestContext:
    """A command acts through the service functions as the platform operator (resolvers/deps.py)."""
    from resolvers.deps import RequestContext

    return RequestContext.for_operator(services, operator_name(), organization_id=organization_id)


async def operator_context_for_slug(services: Services, slug: str) -> RequestContext | None:
    """The operator's context in the organization `slug` names; None (and a message) when there is none."""
    from authz.errors import NotFound
    from resolvers.organizations import find_organization

    lookup = as_operator(services)
    try:
        async with lookup.unit_of_work(writes=False):
            org = await find_organization(lookup, slug)
    except NotFound as exc:
        print(f"portcullis: {exc.message}", file=sys.stderr)
        return None
    return as_operator(services, org.id)
