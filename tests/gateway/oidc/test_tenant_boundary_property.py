"""C-124 to C-127 as one property: whatever tenant A does, in whatever order, tenant B's members keep signing
in as themselves with what they had, and A never learns anything about an account that is not its member.

A hypothesis state machine drives the real app in process, on SQLite and on PostgreSQL. Its rules are sync
and share one event loop the machine owns; the app's lifespan stays open for the whole example. Each example
starts from an emptied database:

- B, the victim: its owner and two members who joined by invitation with passwords of their own (an admin,
  and an analyst with a second factor). For each, from their home address: the user id, a session (access
  and refresh token), what `me` answered (role, permissions, second factor). B does nothing afterwards, so
  its member list and roles must stay as they were.
- A, the attacker: its owner, an OIDC connection to the rogue provider (A decides what it asserts), its own
  domain alpha.test whose mailboxes it reads (its staff). Drawn per example: who claimed beta.test first (A,
  B or nobody; the first claim wins), and which of B's people had already joined A by their own act (and
  perhaps linked A's provider to their account). People belong to several organizations; the deep states
  come from there, and drawing them is what lets a short run reach them.

A acts from its own addresses: invitations of B's addresses and of fresh ones, re-sends and revocations,
guessed and scraped invitation tokens, unlocks, failed sign-ins, sign-ins through its provider (under the
subject it keeps for an address, or under another's) followed by every account-wide change it can try,
role changes and removals, its staff's second factors. B's people act only by their own will (accepting
A's invitation, linking A's provider), and the operator bootstraps tenants for B's addresses.

The model keeps which accounts are A's members by their holders' act, and which accounts A may act as: its
staff's, those its provider created at a domain A claimed, and B's people who are A's members and linked
its provider themselves. Every response A receives is kept with the members A had at that moment, and
checked against the accounts that were not among them; every credential is judged when A gets it.

The TOTP service's clock is the machine's: a code is accepted once per 30-second step and B's analyst signs
in after every rule, so the clock moves a step before each code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyotp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from gateway import cli
from gateway.app import create_app
from resolvers.mail import read_mailbox
from tests.conftest import CLIENT_IP, FAST_HASH, _truncate, gql, make_tenant
from tests.gateway.oidc.conftest import GATEWAY, Gateway, configure_rogue, csrf_cookie, sso_settings
from tests.idp.rogue_op import RogueProvider
from tests.mail import MAIL_BOX, token_in

T = TypeVar("T")

A_SLUG, B_SLUG = "alpha", "beta"
A_OWNER = "owner@alpha.test"
A_PASSWORD = "the attacker's chosen passphrase"
A_IPS = ("192.0.2.66", "192.0.2.67", "192.0.2.68")
PROXIES = ["203.0.113.0/24"]
ROLES = ("viewer", "analyst", "manager", "admin")
# (email, role in B, second factor)
B_PEOPLE = (
    ("owner@beta.test", "owner", False),
    ("admin@beta.test", "admin", False),
    ("analyst@beta.test", "analyst", True),
)
B_EMAILS = tuple(p[0] for p in B_PEOPLE)
FRESH_AT_B = ("new.cfo@beta.test", "ops@beta.test")  # nobody's account yet; A never reads their mail
A_STAFF = ("hire.one@alpha.test", "hire.two@alpha.test")  # A's own mailboxes
ADDRESSES = B_EMAILS + FRESH_AT_B + A_STAFF
# A's provider's directory: the subject it asserts for each address
SUBJECT_OF = {email: f"subject-{i}" for i, email in enumerate(ADDRESSES)}
TAKEN_OVER = "taken.over@alpha.test"
# low, so that A's failures reach the account-wide ceiling within a run
ACCOUNT_CEILING = 8
NOBODY = "00000000-0000-4000-8000-000000000000"

ME = "{ me { user { id email mfaEnabled lastLoginAt } organization { id slug } role permissions authMethod } }"
SIGNED_IN = "accessToken refreshToken user { id email mfaEnabled lastLoginAt } organization { id slug }"
LOGIN = (
    "mutation($e: String!, $p: String!, $o: String, $t: String) "
    f"{{ login(email: $e, password: $p, organization: $o, totp: $t) {{ {SIGNED_IN} }} }}"
)
ACCEPT = f"mutation($t: String!, $p: String!) {{ acceptInvitation(token: $t, password: $p) {{ {SIGNED_IN} }} }}"
REFRESH = "mutation($r: String) { refreshToken(refreshToken: $r) { accessToken refreshToken } }"
INVITATION = "id email role status createdAt expiresAt sentAt sendCount acceptedAt revokedAt"
INVITE = (
    f"mutation($e: String!, $r: String!) {{ addMember(email: $e, role: $r) {{ invitation {{ {INVITATION} }} "
    "membership { id role user { id email mfaEnabled lastLoginAt } } invitationToken } }"
)
RESEND = f"mutation($id: ID!) {{ resendInvitation(id: $id) {{ {INVITATION} }} }}"
REVOKE = f"mutation($id: ID!) {{ revokeInvitation(id: $id) {{ {INVITATION} }} }}"
MEMBERS = (
    "{ organization { members(first: 100) { edges { node { id role user { id email mfaEnabled lastLoginAt } } } } } }"
)
B_VIEW = (
    "{ organization { members(first: 100) { edges { node { id role user { id email } } } } } "
    "roles { name permissions inherits } }"
)
UPDATE_ROLE = "mutation($id: ID!, $r: String!) { updateMemberRole(membershipId: $id, role: $r) { id role } }"
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) }"
UNLOCK = "mutation($id: ID!) { unlockUser(userId: $id) }"
ENROLL = "mutation { enrollTotp { secret } }"
CONFIRM = "mutation($c: String!) { confirmTotp(code: $c) }"
DISABLE = "mutation($c: String!) { disableTotp(code: $c) }"
CHANGE_EMAIL = "mutation($e: String!, $p: String) { changeEmail(newEmail: $e, currentPassword: $p) }"
START_LINK = "mutation { startSsoLink { url } }"
CLAIM = "mutation($d: String!) { claimDomain(domain: $d) { domain } }"
INVITE_TOKEN = re.compile(r"pti_[A-Za-z0-9_-]{20,}")
# what differs between two invitations by nature
BLANKED = {"id", "email", "createdAt", "expiresAt", "sentAt"}


def shape(body: dict[str, Any]) -> Any:
    """An answer with its ids, addresses and times blanked, and without the cost extension (the budget moves
    with every request)."""

    def blank(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("*" if k in BLANKED and v is not None else blank(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [blank(v) for v in value]
        return value

    errors = [{"message": e.get("message"), **e.get("extensions", {})} for e in body.get("errors") or []]
    return {"data": blank(body.get("data")), "errors": errors}


def codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code", "") for e in body.get("errors") or []]


def walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


@dataclass
class Person:
    """One of B's people, as the test knows them (never as A does)."""

    email: str
    role: str
    password: str
    home: str
    user_id: str = ""
    secret: str | None = None
    access: str = ""
    refresh: str = ""
    seen: dict[str, Any] = field(default_factory=dict)
    in_a: bool = False
    accepted_a: bool = False
    a_access: str | None = None  # the holder's own session in A, from accepting
    linked: bool = False
    last_logins: set[str] = field(default_factory=set)


@dataclass
class Received:
    """A response A got, and who A's members were when it got it."""

    text: str
    body: Any
    members: frozenset[str]
    what: str


@dataclass
class Invite:
    email: str
    role: str
    status: str = "PENDING"


def tenant_boundary_machine(
    database_url: str, signing_key: str, rogue: RogueProvider, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> type[RuleBasedStateMachine]:
    class TenantBoundary(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            _truncate(database_url)
            rogue.reset()
            self.loop = asyncio.new_event_loop()
            self.clock = time.time()
            self.app = create_app(
                sso_settings(
                    database_url,
                    signing_key,
                    trusted_proxies=PROXIES,
                    lockout_account_ceiling=ACCOUNT_CEILING,
                    log_level="WARNING",
                )
            )
            self.app.state.services.totp.clock = lambda: self.clock
            self.lifespan = self.app.router.lifespan_context(self.app)
            self.transport = httpx.ASGITransport(app=self.app, client=(CLIENT_IP, 40000))
            self.api = httpx.AsyncClient(transport=self.transport, base_url=GATEWAY)
            self.a_browser = self.browser(A_IPS[0])
            self.opened = False
            try:
                self.run(self.lifespan.__aenter__())
                self.opened = True
                self.build_world()
            except BaseException:
                self.teardown()
                raise

        # -- plumbing ------------------------------------------------------------------------------------

        def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coroutine)

        def teardown(self) -> None:
            with contextlib.suppress(Exception):
                self.run(self.api.aclose())
                self.run(self.a_browser.aclose())
            if self.opened:
                self.run(self.lifespan.__aexit__(None, None, None))
                self.opened = False
            self.loop.close()

        def browser(self, ip: str) -> httpx.AsyncClient:
            """The gateway in process, the providers over loopback, one cookie jar."""
            return httpx.AsyncClient(
                mounts={GATEWAY: self.transport}, follow_redirects=False, timeout=20, headers={"X-Forwarded-For": ip}
            )

        def call(
            self,
            query: str,
            variables: dict[str, Any] | None = None,
            *,
            ip: str,
            token: str | None = None,
            by_a: str | None = None,
        ) -> tuple[int, dict[str, Any]]:
            r = self.run(gql(self.api, query, variables, token=token, headers={"X-Forwarded-For": ip}))
            if by_a is not None:
                self.a_got(r, by_a)
            return r.status_code, r.json()

        def a_call(
            self,
            query: str,
            variables: dict[str, Any] | None = None,
            *,
            what: str,
            token: str | None = None,
            ip: str = A_IPS[0],
        ) -> dict[str, Any]:
            return self.call(query, variables, ip=ip, token=token or self.a_owner_token, by_a=what)[1]

        def a_got(self, r: httpx.Response, what: str) -> None:
            try:
                body = r.json()
            except ValueError:
                body = None
            self.received.append(
                Received(f"{r.headers.get('location', '')}\n{r.text}", body, frozenset(self.a_members), what)
            )
            self.scraped.update(INVITE_TOKEN.findall(r.text))
            for node in walk(body):
                token = node.get("accessToken")
                if isinstance(token, str):
                    self.a_credentials.append(token)

        def acts_as(self, user_id: str, organization_id: str, how: str) -> None:
            """A credential A got acts as `user_id`: allowed when it is A's own account (its staff's, its
            provider's) or one of B's people who is A's member and linked A's provider themselves."""
            linked = {p.user_id for p in self.people if p.linked and p.in_a}
            self.identities.append((user_id, organization_id, how, user_id in self.a_own | linked))

        def invitation_mails(self, to: str, organization_id: str) -> list[Any]:
            """The invitations from that organization in `to`'s mailbox, newest first."""

            async def read() -> list[Any]:
                async with self.app.state.services.db.transaction() as session:
                    return await read_mailbox(session, MAIL_BOX, to=to)

            return [m for m in self.run(read()) if m.template == "invitation" and m.organization_id == organization_id]

        def rows(self, statement: str, **params: Any) -> list[Any]:
            async def read() -> list[Any]:
                async with self.app.state.services.db.transaction() as session:
                    return list((await session.execute(text(statement), params)).all())

            return self.run(read())

        def code(self, secret: str) -> str:
            self.clock += 30
            return pyotp.TOTP(secret).at(self.clock)

        def sign_in(self, p: Person) -> dict[str, Any]:
            variables = {"e": p.email, "p": p.password, "o": B_SLUG, "t": self.code(p.secret) if p.secret else None}
            _, body = self.call(LOGIN, variables, ip=p.home)
            assert (body.get("data") or {}).get("login"), (p.email, body)
            payload: dict[str, Any] = body["data"]["login"]
            p.last_logins.add(payload["user"]["lastLoginAt"])
            return payload

        def b_listing(self) -> Any:
            owner = self.people[0]
            _, body = self.call(B_VIEW, ip=owner.home, token=self.sign_in(owner)["accessToken"])
            data = body["data"]
            members = sorted(
                (e["node"]["id"], e["node"]["role"], e["node"]["user"]["id"], e["node"]["user"]["email"])
                for e in data["organization"]["members"]["edges"]
            )
            return members, sorted(json.dumps(r, sort_keys=True) for r in data["roles"])

        def a_member_rows(self) -> list[dict[str, Any]]:
            body = self.a_call(MEMBERS, what="list members")
            return [e["node"] for e in body["data"]["organization"]["members"]["edges"]]

        # -- the world -----------------------------------------------------------------------------------

        def build_world(self) -> None:
            self.received: list[Received] = []
            self.checked = 0
            self.scraped: set[str] = set()
            self.a_credentials: list[str] = []
            self.resolved = 0
            # (user id, organization id, how A got it, whether A could act as that account then)
            self.identities: list[tuple[str, str, str, bool]] = []
            self.add_answers: dict[tuple[str, str], dict[bool, Any]] = {}
            self.unlock_refusals: dict[bool, Any] = {}
            self.boots: list[tuple[str, str]] = []  # (organization id, its admin's user id)
            self.invitations: dict[str, Invite] = {}  # A's, by id
            self.a_secrets: dict[str, str] = {}
            self.subjects: dict[str, str] = {}  # subject at A's provider -> the account it is linked to
            b = self.run(
                make_tenant(
                    database_url, slug=B_SLUG, email=B_EMAILS[0], password=f"{B_EMAILS[0]}'s own long passphrase"
                )
            )
            a = self.run(
                make_tenant(database_url, slug=A_SLUG, email=A_OWNER, password=A_PASSWORD, limits={"MEMBERS": None})
            )
            self.b_org, self.a_org = b.org_id, a.org_id
            self.people = [
                Person(email, role, f"{email}'s own long passphrase", f"198.51.100.{10 + i}")
                for i, (email, role, _) in enumerate(B_PEOPLE)
            ]
            owner = self.people[0]
            owner.user_id = b.user_id
            owner_token = self.sign_in(owner)["accessToken"]
            self.b_invitations: list[str] = []
            for p, (_, _, second_factor) in zip(self.people[1:], B_PEOPLE[1:], strict=True):
                _, body = self.call(INVITE, {"e": p.email, "r": p.role}, ip=owner.home, token=owner_token)
                invitation = body["data"]["addMember"]["invitation"]
                self.b_invitations.append(invitation["id"])
                [mail] = self.invitation_mails(p.email, self.b_org)
                _, body = self.call(ACCEPT, {"t": token_in(mail), "p": p.password}, ip=p.home)
                p.user_id = body["data"]["acceptInvitation"]["user"]["id"]
                if second_factor:
                    session = self.sign_in(p)["accessToken"]
                    _, body = self.call(ENROLL, ip=p.home, token=session)
                    p.secret = body["data"]["enrollTotp"]["secret"]
                    _, body = self.call(CONFIRM, {"c": self.code(p.secret)}, ip=p.home, token=session)
                    assert body.get("data"), body
            for p in self.people:
                payload = self.sign_in(p)
                p.access, p.refresh = payload["accessToken"], payload["refreshToken"]
                _, body = self.call(ME, ip=p.home, token=p.access)
                me = body["data"]["me"]
                assert me["organization"]["slug"] == B_SLUG
                assert me["user"]["mfaEnabled"] is (p.secret is not None)
                p.seen = {
                    "role": me["role"],
                    "permissions": sorted(me["permissions"]),
                    "mfaEnabled": me["user"]["mfaEnabled"],
                    "id": me["user"]["id"],
                }
            self.b_view = self.b_listing()
            self.accounts: dict[str, str] = {p.email: p.user_id for p in self.people}
            self.accounts[A_OWNER] = a.user_id
            self.a_members: set[str] = {a.user_id}
            self.a_own: set[str] = {a.user_id}
            self.a_passwords: dict[str, str] = {A_OWNER: A_PASSWORD}
            _, body = self.call(LOGIN, {"e": A_OWNER, "p": A_PASSWORD}, ip=A_IPS[0], by_a="owner signs in")
            self.a_tokens: dict[str, str] = {A_OWNER: body["data"]["login"]["accessToken"]}
            self.a_owner_token = self.a_tokens[A_OWNER]
            self.run(configure_rogue(Gateway(self.app, self.a_browser, a, self.a_owner_token), rogue))
            self.a_call(CLAIM, {"d": "alpha.test"}, what="claim own domain")

        @initialize(first=st.sampled_from(["A", "B", "nobody"]))
        def who_claimed_beta_test(self, first: str) -> None:
            if first == "B":
                owner = self.people[0]
                _, body = self.call(CLAIM, {"d": "beta.test"}, ip=owner.home, token=self.sign_in(owner)["accessToken"])
                assert body["data"]["claimDomain"], body
                assert codes(self.a_call(CLAIM, {"d": "beta.test"}, what="claim B's domain")) == ["CONFLICT"]
            elif first == "A":
                assert self.a_call(CLAIM, {"d": "beta.test"}, what="claim B's domain")["data"]["claimDomain"]

        @initialize(
            joined=st.sets(st.integers(0, len(B_PEOPLE) - 1), min_size=1, max_size=2),
            link=st.sampled_from([True, False]),
        )
        def some_of_b_joined_a_by_their_own_act(self, joined: set[int], link: bool) -> None:
            for k in sorted(joined):
                p = self.people[k]
                self.invite(p.email, "viewer")
                self.accept_as_holder(p)
                if link:
                    self.link_as_holder(p)

        # -- invitations ---------------------------------------------------------------------------------

        def pending_for(self, email: str) -> str | None:
            return next(
                (i for i, inv in self.invitations.items() if inv.email == email and inv.status == "PENDING"), None
            )

        def invite(self, email: str, role: str) -> None:
            has_account = email in self.accounts
            known = (
                "member"
                if self.accounts.get(email) in self.a_members
                else "pending"
                if self.pending_for(email)
                else "new"
            )
            body = self.a_call(INVITE, {"e": email, "r": role}, what=f"addMember {email}")
            self.add_answers.setdefault((known, role), {})[has_account] = shape(body)
            if known != "new":
                assert codes(body) == ["CONFLICT"], body
                return
            answer = (body.get("data") or {}).get("addMember")
            assert answer, body
            assert answer["membership"] is None
            assert answer["invitationToken"] is None
            self.invitations[answer["invitation"]["id"]] = Invite(email, role)

        @rule(email=st.sampled_from(ADDRESSES), role=st.sampled_from(ROLES))
        def a_invites(self, email: str, role: str) -> None:
            self.invite(email, role)

        @rule(i=st.integers(0, 7), revoke=st.booleans())
        def a_resends_or_revokes(self, i: int, revoke: bool) -> None:
            """Its own invitations, or B's (whose ids the test knows and A never saw)."""
            ids = [*self.invitations, *self.b_invitations]
            invitation_id = ids[i % len(ids)]
            body = self.a_call(
                REVOKE if revoke else RESEND,
                {"id": invitation_id},
                what=f"{'revoke' if revoke else 'resend'} {invitation_id}",
            )
            mine = self.invitations.get(invitation_id)
            if mine is None:
                assert codes(body) == ["NOT_FOUND"], body
            elif revoke and mine.status == "PENDING":
                assert body["data"]["revokeInvitation"]["status"] == "REVOKED", body
                mine.status = "REVOKED"

        @rule(scraped=st.booleans(), guess=st.binary(min_size=32, max_size=32))
        def a_accepts_a_token_it_could_know(self, scraped: bool, guess: bytes) -> None:
            """Every invitation token that ever appeared in what A got (none should), or a guess."""
            tokens = (
                sorted(self.scraped)
                if scraped and self.scraped
                else ["pti_" + base64.urlsafe_b64encode(guess).rstrip(b"=").decode()]
            )
            for token in tokens:
                body = self.a_call(ACCEPT, {"t": token, "p": A_PASSWORD}, what="accept a token A knows")
                assert codes(body) == ["UNAUTHENTICATED"], body

        def staff_invited(self) -> list[str]:
            return [e for e in A_STAFF if self.pending_for(e) and e not in self.a_secrets]

        @precondition(lambda self: self.staff_invited())
        @rule(i=st.integers(0, 3))
        def a_staff_accepts(self, i: int) -> None:
            """A reads its own staff's mailboxes: joining A that way is legitimate."""
            candidates = self.staff_invited()
            email = candidates[i % len(candidates)]
            invitation_id = self.pending_for(email)
            assert invitation_id is not None
            password = self.a_passwords.setdefault(email, f"{email}'s password, chosen by A")
            token = token_in(self.invitation_mails(email, self.a_org)[0])
            r = self.run(gql(self.api, ACCEPT, {"t": token, "p": password}, headers={"X-Forwarded-For": A_IPS[0]}))
            payload = r.json()["data"]["acceptInvitation"]
            self.invitations[invitation_id].status = "ACCEPTED"
            user_id = payload["user"]["id"]
            self.accounts[email] = user_id
            self.a_members.add(user_id)
            self.a_own.add(user_id)
            self.a_tokens[email] = payload["accessToken"]
            self.a_got(r, f"{email} accepts")  # once the model knows A's new member

        # -- B's people, by their own will ---------------------------------------------------------------

        def b_invited(self) -> list[Person]:
            return [p for p in self.people if self.pending_for(p.email) and not p.in_a]

        def accept_as_holder(self, p: Person) -> None:
            """The holder reads A's invitation in their own mailbox and accepts with their own password
            (signed in too, when the account has a second factor)."""
            invitation_id = self.pending_for(p.email)
            assert invitation_id is not None
            bearer = p.access if p.secret else None
            token = token_in(self.invitation_mails(p.email, self.a_org)[0])
            _, body = self.call(ACCEPT, {"t": token, "p": p.password}, ip=p.home, token=bearer)
            payload = body["data"]["acceptInvitation"]
            assert payload["organization"]["id"] == self.a_org, body
            # not a last sign-in A must not know: it is the invitation's `acceptedAt`, which A sees
            self.invitations[invitation_id].status = "ACCEPTED"
            p.in_a = p.accepted_a = True
            p.a_access = payload["accessToken"]
            self.a_members.add(p.user_id)

        def link_as_holder(self, p: Person) -> None:
            """The holder, signed in to A, links A's provider to their account; A's provider vouches for the
            holder's own address (A wants the link to succeed)."""
            assert p.a_access is not None
            subject = SUBJECT_OF[p.email]
            _, body = self.call(START_LINK, ip=p.home, token=p.a_access)
            rogue.behaviour.subject, rogue.behaviour.email, rogue.behaviour.email_verified = subject, p.email, True
            holder = self.browser(p.home)
            try:
                r = self.through_provider(holder, body["data"]["startSsoLink"]["url"], by_a=False)
            finally:
                self.run(holder.aclose())
            if self.subjects.get(subject, p.user_id) != p.user_id:
                assert r.status_code == 400, r.text  # A's provider gave that subject to another account
                return
            assert r.status_code == 303, r.text
            self.subjects[subject] = p.user_id
            p.linked = True

        @precondition(lambda self: self.b_invited())
        @rule(i=st.integers(0, 3), link=st.booleans())
        def b_member_accepts_by_their_own_act(self, i: int, link: bool) -> None:
            candidates = self.b_invited()
            p = candidates[i % len(candidates)]
            self.accept_as_holder(p)
            if link and not p.linked:
                self.link_as_holder(p)

        # -- members of A ---------------------------------------------------------------------------------

        @precondition(lambda self: len(self.a_members) > 1)
        @rule(i=st.integers(0, 7), role=st.sampled_from(ROLES), remove=st.booleans())
        def a_changes_or_removes_a_member(self, i: int, role: str, remove: bool) -> None:
            rows = [r for r in self.a_member_rows() if r["user"]["id"] != self.accounts[A_OWNER]]
            if not rows:
                return
            target = rows[i % len(rows)]
            if not remove:
                body = self.a_call(UPDATE_ROLE, {"id": target["id"], "r": role}, what="updateMemberRole")
                assert body["data"]["updateMemberRole"]["role"] == role, body
                return
            body = self.a_call(REMOVE, {"id": target["id"]}, what="removeMember")
            assert body["data"] == {"removeMember": True}, body
            self.a_members.discard(target["user"]["id"])
            for p in self.people:
                if p.user_id == target["user"]["id"]:
                    p.in_a, p.a_access = False, None

        @rule(i=st.integers(0, 15))
        def a_unlocks(self, i: int) -> None:
            """Ids A has seen (its members'), and ids it never saw: B's people's, bootstrapped owners', none."""
            targets = [
                *sorted(self.a_members),
                *(p.user_id for p in self.people),
                *(admin for _, admin in self.boots),
                NOBODY,
            ]
            user_id = targets[i % len(targets)]
            body = self.a_call(UNLOCK, {"id": user_id}, what="unlockUser")
            if user_id in self.a_members:
                assert body["data"] == {"unlockUser": True}, body
            else:
                assert codes(body) == ["NOT_FOUND"], body
                self.unlock_refusals[user_id != NOBODY] = shape(body)

        @rule(
            k=st.integers(0, len(B_PEOPLE) - 1),
            aim=st.sampled_from([A_SLUG, None, B_SLUG]),
            ip=st.sampled_from(A_IPS),
            n=st.integers(1, 7),
        )
        def a_fails_sign_ins(self, k: int, aim: str | None, ip: str, n: int) -> None:
            p = self.people[k]
            for attempt in range(n):
                body = self.a_call(
                    LOGIN, {"e": p.email, "p": f"guess {attempt} of many", "o": aim}, ip=ip, what="failed sign-in"
                )
                assert codes(body) == ["UNAUTHENTICATED"], body

        @rule(email=st.sampled_from((A_OWNER, *A_STAFF)), enable=st.booleans())
        def a_staff_changes_their_second_factor(self, email: str, enable: bool) -> None:
            token = self.a_tokens.get(email)
            if token is None or self.accounts.get(email) not in self.a_members:
                return
            secret = self.a_secrets.get(email)
            if enable and secret is None:
                body = self.a_call(ENROLL, token=token, what="staff enrollTotp")
                secret = body["data"]["enrollTotp"]["secret"]
                body = self.a_call(CONFIRM, {"c": self.code(secret)}, token=token, what="staff confirmTotp")
                assert body.get("data"), body
                self.a_secrets[email] = secret
            elif not enable and secret is not None:
                body = self.a_call(DISABLE, {"c": self.code(secret)}, token=token, what="staff disableTotp")
                assert body["data"] == {"disableTotp": True}, body
                del self.a_secrets[email]

        # -- A's provider ---------------------------------------------------------------------------------

        def through_provider(self, browser: httpx.AsyncClient, start: str, *, by_a: bool) -> httpx.Response:
            """Start at the gateway, pass the rogue provider, follow its callback: the gateway's last answer."""
            r = self.run(browser.get(start))
            for _ in range(2):
                if by_a:
                    self.a_got(r, "sso")
                if r.status_code != 302:
                    return r
                r = self.run(browser.get(r.headers["location"]))
            if by_a:
                self.a_got(r, "sso")
            return r

        def browser_call(self, query: str, variables: dict[str, Any] | None, csrf: str, what: str) -> dict[str, Any]:
            r = self.run(
                self.a_browser.post(
                    f"{GATEWAY}/graphql",
                    json={"query": query, "variables": variables or {}},
                    headers={"X-CSRF-Token": csrf},
                )
            )
            self.a_got(r, what)
            return r.json()  # type: ignore[no-any-return]

        @precondition(lambda self: any(p.linked for p in self.people))
        @rule(i=st.integers(0, 3))
        def a_provider_signs_in_a_linked_account(self, i: int) -> None:
            linked = [p.email for p in self.people if p.linked]
            email = linked[i % len(linked)]
            self.through_a_provider(SUBJECT_OF[email], email)

        @rule(i=st.integers(0, len(ADDRESSES) - 1), lie=st.integers(0, len(ADDRESSES)))
        def a_provider_asserts_an_address(self, i: int, lie: int) -> None:
            """A's provider asserts an address (verified), under the subject it keeps for it or another's."""
            email = ADDRESSES[i]
            self.through_a_provider(SUBJECT_OF[ADDRESSES[lie] if lie < len(ADDRESSES) else email], email)

        def through_a_provider(self, subject: str, email: str) -> None:
            """A's browser signs in through A's provider; with any session it gets, A tries what is
            account-wide: a second factor of its own (enrolled and confirmed), removing one, the address."""
            rogue.behaviour.subject, rogue.behaviour.email, rogue.behaviour.email_verified = subject, email, True
            self.a_browser.cookies.clear()
            r = self.through_provider(self.a_browser, f"{GATEWAY}/auth/sso/{A_SLUG}", by_a=True)
            if r.status_code != 303:
                return
            csrf = csrf_cookie(r) or ""
            answer = self.run(
                self.a_browser.post(f"{GATEWAY}/graphql", json={"query": ME}, headers={"X-CSRF-Token": csrf})
            )
            me = answer.json()["data"]["me"]
            user_id, user_email = me["user"]["id"], me["user"]["email"]
            if user_id not in self.accounts.values():
                # a new account, made by A's provider: A's own
                self.accounts[user_email] = user_id
                self.a_own.add(user_id)
            if user_id in self.a_own:
                self.a_members.add(user_id)
            self.subjects.setdefault(subject, user_id)
            self.a_got(answer, "me through the provider")
            self.acts_as(user_id, me["organization"]["id"], f"provider {subject} asserting {email}")
            body = self.browser_call(ENROLL, None, csrf, "enrollTotp")
            secret = ((body.get("data") or {}).get("enrollTotp") or {}).get("secret")
            if secret:
                self.browser_call(CONFIRM, {"c": self.code(secret)}, csrf, "confirmTotp")
            else:
                self.browser_call(DISABLE, {"c": "000000"}, csrf, "disableTotp")
            self.browser_call(CHANGE_EMAIL, {"e": TAKEN_OVER, "p": None}, csrf, "changeEmail")

        # -- the operator -------------------------------------------------------------------------------

        @rule(email=st.sampled_from(B_EMAILS + FRESH_AT_B))
        def operator_bootstraps_a_tenant(self, email: str) -> None:
            slug = f"boot{len(self.boots) + 1}"
            with monkeypatch.context() as env:
                env.chdir(workdir)
                env.setenv("PORTCULLIS_DATABASE_URL", database_url)
                env.setenv("PORTCULLIS_ENV", "dev")
                env.setenv("PORTCULLIS_PASSWORD_HASH_MEMORY_KIB", str(FAST_HASH.memory_kib))
                env.setenv("PORTCULLIS_PASSWORD_HASH_TIME_COST", str(FAST_HASH.time_cost))
                out, err = io.StringIO(), io.StringIO()
                # the command runs an event loop of its own
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), ThreadPoolExecutor(1) as pool:
                    code = pool.submit(
                        cli.main, ["bootstrap", "--org", slug, "--name", slug.title(), "--admin-email", email]
                    ).result()
            assert code == 0, err.getvalue()
            [(org_id,)] = self.rows("SELECT id FROM organizations WHERE slug = :s", s=slug)
            [(user_id,)] = self.rows("SELECT id FROM users WHERE email_key = :e", e=email)
            self.accounts.setdefault(email, user_id)
            self.boots.append((org_id, user_id))
            # A, which gets neither the link nor the one-time password, tries its way in
            passwords = sorted({A_PASSWORD, *self.a_passwords.values()})
            for who in [email, *self.a_passwords]:
                for password in passwords:
                    body = self.a_call(LOGIN, {"e": who, "p": password, "o": slug}, what=f"sign in to {slug}")
                    assert codes(body) == ["UNAUTHENTICATED"], body
            r = self.run(self.a_browser.get(f"{GATEWAY}/auth/sso/{slug}"))
            self.a_got(r, f"sso to {slug}")
            assert r.status_code not in (302, 303), r.text

        # -- invariants ----------------------------------------------------------------------------------

        @invariant()
        def b_members_sign_in_as_themselves_with_what_they_had(self) -> None:
            """C-126, C-127: B's people sign in to B from home with their own password (and code), with the
            role, permissions and second factor they had, and the session they had is alive."""
            for p in self.people:
                payload = self.sign_in(p)
                assert (payload["organization"]["id"], payload["user"]["id"]) == (self.b_org, p.user_id)
                for token in (payload["accessToken"], p.access):
                    status, body = self.call(ME, ip=p.home, token=token)
                    assert status == 200, (p.email, body)
                    me = body["data"]["me"]
                    assert me["organization"]["id"] == self.b_org, (p.email, me)
                    now = {
                        "role": me["role"],
                        "permissions": sorted(me["permissions"]),
                        "mfaEnabled": me["user"]["mfaEnabled"],
                        "id": me["user"]["id"],
                    }
                    assert now == p.seen, (p.email, now, p.seen)
                _, body = self.call(REFRESH, {"r": p.refresh}, ip=p.home)
                assert (body.get("data") or {}).get("refreshToken"), (p.email, body)
                p.refresh = body["data"]["refreshToken"]["refreshToken"]

        @invariant()
        def b_members_and_roles_are_b_own(self) -> None:
            assert self.b_listing() == self.b_view

        @invariant()
        def a_members_are_those_who_joined_by_their_own_act(self) -> None:
            """C-125: A's members are its staff, its provider's accounts and whoever accepted its invitation."""
            listed = {r["user"]["id"] for r in self.a_member_rows()}
            assert listed == self.a_members, (listed, self.a_members)

        @invariant()
        def no_b_session_in_a_without_acceptance(self) -> None:
            rows = self.rows("SELECT DISTINCT user_id FROM auth_sessions WHERE organization_id = :a", a=self.a_org)
            with_session = {r[0] for r in rows}
            for p in self.people:
                assert p.user_id not in with_session or p.accepted_a, f"{p.email} has a session in A unasked"

        @invariant()
        def a_holds_no_credential_of_b(self) -> None:
            """C-124, C-126: every credential A got acts in A, as an account A may act as."""
            while self.resolved < len(self.a_credentials):
                token = self.a_credentials[self.resolved]
                self.resolved += 1
                status, body = self.call(ME, ip=A_IPS[0], token=token, by_a="me with a token A got")
                if status == 200 and (body.get("data") or {}).get("me"):
                    me = body["data"]["me"]
                    self.acts_as(me["user"]["id"], me["organization"]["id"], "a token A got")
            elsewhere = {self.b_org, *(org_id for org_id, _ in self.boots)}
            for user_id, org_id, how, allowed in self.identities:
                assert org_id not in elsewhere, f"A acts in {org_id} as {user_id} ({how})"
                assert org_id == self.a_org, (user_id, org_id, how)
                assert allowed, f"A acts as {user_id} ({how})"

        @invariant()
        def a_learned_nothing_of_non_members(self) -> None:
            """C-125: no id, last sign-in or second-factor state of an account that was not A's member when A
            got the answer; an invitation, or an unlock, answers alike whether or not the account exists."""
            last_logins = {p.user_id: p.last_logins for p in self.people}
            for _, admin in self.boots:
                last_logins.setdefault(admin, set())
            for got in self.received[self.checked :]:
                for user_id, values in last_logins.items():
                    if user_id in got.members:
                        continue
                    assert user_id not in got.text, f"{got.what} told A the id of {user_id}"
                    for value in values:
                        assert value not in got.text, f"{got.what} told A when {user_id} signed in"
                for node in walk(got.body):
                    if "mfaEnabled" in node or "lastLoginAt" in node:
                        assert node.get("id") in got.members, f"{got.what} described a non-member: {node}"
            self.checked = len(self.received)
            for (known, role), by_existence in self.add_answers.items():
                assert len({json.dumps(a, sort_keys=True) for a in by_existence.values()}) == 1, (
                    known,
                    role,
                    by_existence,
                )
            assert len({json.dumps(a, sort_keys=True) for a in self.unlock_refusals.values()}) <= 1, (
                self.unlock_refusals
            )

    return TenantBoundary


@pytest.mark.slow
def test_c124_to_c127_tenant_a_never_reaches_tenant_b(
    database_url: str, signing_key: str, rogue: RogueProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-124, C-125, C-126, C-127: random sequences of tenant A's invitations, acceptances, sign-ins through its
    provider, bootstraps, unlocks, second-factor and role changes never change what B's members can do or sign
    in as, and never tell A anything about an account that is not its member."""
    machine = tenant_boundary_machine(database_url, signing_key, rogue, tmp_path, monkeypatch)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=6,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
