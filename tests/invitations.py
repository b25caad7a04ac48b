"""Joining an organization in tests, the way a person does: invited by email, accepting with the token
the message carries (read from the mailbox, tests/mail.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import gql
from tests.mail import last_mail, token_in

INVITE = """
mutation($e: String!, $r: String!) {
  addMember(email: $e, role: $r) { invitation { id email role status expiresAt } membership { id } invitationToken }
}
"""
ACCEPT = """
mutation($t: String!, $p: String!) {
  acceptInvitation(token: $t, password: $p) { accessToken refreshToken user { id email } organization { id slug } }
}
"""
MY_MEMBERSHIP = "{ me { user { id } } organization { members(first: 100) { edges { node { id user { id } } } } } }"


@dataclass
class Joined:
    membership_id: str
    user_id: str
    access_token: str
    refresh_token: str


async def invite(client: httpx.AsyncClient, admin_token: str, email: str, role: str) -> dict[str, Any]:
    """`addMember`'s answer (its `data.addMember`); asserts it succeeded."""
    body = (await gql(client, INVITE, {"e": email, "r": role}, token=admin_token)).json()
    assert (body.get("data") or {}).get("addMember"), body
    return body["data"]["addMember"]  # type: ignore[no-any-return]


async def invitation_token(database_url: str, email: str) -> str:
    return token_in(await last_mail(database_url, email, "invitation"))


async def accept(client: httpx.AsyncClient, token: str, password: str, *, bearer: str | None = None) -> httpx.Response:
    return await gql(client, ACCEPT, {"t": token, "p": password}, token=bearer)


async def join(
    client: httpx.AsyncClient, database_url: str, admin_token: str, email: str, role: str, password: str
) -> Joined:
    """Invite `email`, accept as its holder (a new account with `password`, or an existing account's own
    password), and return the membership, the user and the new session's tokens."""
    await invite(client, admin_token, email, role)
    body = (await accept(client, await invitation_token(database_url, email), password)).json()
    assert (body.get("data") or {}).get("acceptInvitation"), body
    payload = body["data"]["acceptInvitation"]
    access = payload["accessToken"]
    me = (await gql(client, MY_MEMBERSHIP, token=admin_token)).json()
    user_id = payload["user"]["id"]
    membership = next(
        e["node"]["id"] for e in me["data"]["organization"]["members"]["edges"] if e["node"]["user"]["id"] == user_id
    )
    return Joined(membership, user_id, access, payload["refreshToken"])
