"""Role-by-field matrix, generated from the schema and the role table: every built-in role against every
guarded field. The expected outcome comes from `authz.decide`; the actual one from running the field
over HTTP with a token of a member holding that role.

Query-side fields are reached through a path of fields every member may select (Organization.members
through `organization { members { edges { cursor } } }`); denied, they are null (bubbling up to the
nearest nullable field) with FORBIDDEN and the requirement's scopes at their path. Mutations are
called with arguments the service refuses (an unknown id, an empty name), so that an allowed role gets
some error other than FORBIDDEN/UNAUTHENTICATED and nothing is written either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from graphql import is_non_null_type

from authz.roles import ROLE_ORDER
from schema.authorization import field_table
from tests.conftest import Tenant, error_codes, gql, login, make_tenant
from tests.schema.test_idor_sweep import (
    MEMBER_PASSWORD,
    PLAN,
    RULES,
    SCHEMA,
    Target,
    arguments,
    document,
    expected_denial,
    member_token,
    random_id,
    reachable_targets,
    required,
    role_principal,
    tenant_hashes,
    value_at,
)

ROLES = tuple(r.value for r in ROLE_ORDER)
REFUSALS = {"FORBIDDEN", "UNAUTHENTICATED"}
# guarded fields only reached through a list (a connection's edges), which the path finder does not walk;
# each has its own role-by-role test (named here)
THROUGH_LISTS_ONLY = {
    ("Membership", "sessions"): "tests/schema/test_sessions.py::test_member_sessions_by_role",
}
# mutations without arguments that end the caller's other sessions: run from a second session, they end the
# member's first one, which is signed in again after them
ENDS_OTHER_SESSIONS = {("Mutation", "revokeOtherSessions")}
# allowed, it erases the calling member's account (and every token of it): tests/schema/test_privacy.py runs it
ERASES_THE_CALLER = {("Mutation", "eraseAccount")}


def query_targets() -> list[Target]:
    return [t for t in reachable_targets() if t.operation == "query" and t.key in RULES]


def mutation_targets() -> list[Target]:
    return [t for t in reachable_targets() if t.operation == "mutation" and t.key in RULES]


def null_position(target: Target) -> list[str] | None:
    """Where a denied field's null lands: the field itself if nullable, else its nearest nullable
    ancestor, else the whole `data` (None)."""
    for index in range(len(target.steps) - 1, -1, -1):
        if not is_non_null_type(target.steps[index].field.type):
            return target.path[: index + 1]
    return None


@dataclass
class Staff:
    tenant: Tenant
    tokens: dict[str, str]  # built-in role -> access token of the member holding it
    logins: dict[str, Tenant]  # built-in role -> credentials for a second session

    @property
    def roots(self) -> dict[str, str]:
        return {"T": self.tenant.org_id}


@pytest.fixture
async def staff(client: httpx.AsyncClient, database_url: str) -> Staff:
    # the matrix sends far more requests than a plan's minute allows: its rates are lifted, not its rules
    tenant = await make_tenant(
        database_url,
        slug="matrix",
        email="owner@matrix.test",
        plan=PLAN,
        limits={"REQUESTS_PER_MINUTE": None, "COST_PER_MINUTE": None},
    )
    owner = (await login(client, tenant))["accessToken"]
    tokens = {"owner": owner}
    logins = {"owner": tenant}
    for role in ROLES:
        if role == "owner":
            continue
        email = f"{role}@matrix.test"
        tokens[role] = await member_token(client, database_url, owner, email, role)
        logins[role] = Tenant(tenant.org_id, tenant.slug, "", email, MEMBER_PASSWORD)
    for role, token in tokens.items():
        me = (await gql(client, "{ me { role permissions } }", token=token)).json()["data"]["me"]
        assert me["role"] == role
        assert set(me["permissions"]) == {p.value for p in role_principal(role).effective_permissions}
    return Staff(tenant, tokens, logins)


def test_matrix_covers_every_rule() -> None:
    """A rule on a field no query path reaches (or a guarded field outside Query and Mutation) would be
    left out silently: fail instead, so the path finder gets taught the new shape."""
    covered = {t.key for t in query_targets()} | {t.key for t in mutation_targets()} | set(THROUGH_LISTS_ONLY)
    assert covered == set(RULES), sorted(set(RULES) - covered)
    assert len(query_targets()) >= 6
    assert len(mutation_targets()) >= 10


def test_expectations_agree_with_the_authz_report() -> None:
    """`portcullis authz-report` and this matrix read the same role table the same way."""
    report = {(row["type"], row["field"]): row["roles"] for row in field_table(SCHEMA.authorizer)}
    for key in RULES:
        allowed = [role for role in ROLES if expected_denial(role_principal(role), key) is None]
        assert report[key] == allowed, key


async def test_query_fields_by_role(client: httpx.AsyncClient, staff: Staff) -> None:
    problems: list[str] = []
    for target in query_targets():
        query, variables = document(target, [arguments(s, random_id) for s in target.steps])
        takes_arguments = any(required(a) for s in target.steps for a in s.field.args.values())
        for role in ROLES:
            denial = expected_denial(role_principal(role), target.key)
            body = (await gql(client, query, variables, token=staff.tokens[role])).json()
            errors = body.get("errors", [])
            label = f"{role} on {target.key} via {query}"
            if denial is None:
                refused = [e for e in errors if e.get("extensions", {}).get("code") in REFUSALS]
                if refused or (errors and not takes_arguments):
                    problems.append(f"{label}: allowed, got {errors}")
                    continue
                parent = value_at(body.get("data"), target.path[:-1]) if target.path[:-1] else body.get("data")
                if not isinstance(parent, dict) or target.path[-1] not in parent:
                    problems.append(f"{label}: allowed, but the field is missing from {body}")
                continue
            if [(e.get("path"), e.get("extensions")) for e in errors] != [(target.path, denial)]:
                problems.append(f"{label}: expected {denial} at {target.path}, got {errors}")
            at = null_position(target)
            if at is None:
                if body.get("data") is not None:
                    problems.append(f"{label}: expected data null, got {body['data']}")
            else:
                parent = value_at(body.get("data"), at[:-1]) if at[:-1] else body.get("data")
                if not isinstance(parent, dict) or at[-1] not in parent or parent[at[-1]] is not None:
                    problems.append(f"{label}: expected null at {at} and the rest intact, got {body.get('data')}")
    assert not problems, "\n".join(problems)


async def test_mutation_fields_by_role(client: httpx.AsyncClient, database_url: str, staff: Staff) -> None:
    problems: list[str] = []
    for target in mutation_targets():
        query, variables = document(target, [arguments(s, random_id, invalid=True) for s in target.steps])
        for role in ROLES:
            denial = expected_denial(role_principal(role), target.key)
            token = staff.tokens[role]
            if denial is None and target.key in ERASES_THE_CALLER:
                continue
            if denial is None and not target.step.field.args:
                # nothing to make it fail (logout): spend a second session of the same member instead
                token = (await login(client, staff.logins[role]))["accessToken"]
            before = tenant_hashes(database_url, staff.roots, bookkeeping_for=["T", "other"])
            body = (await gql(client, query, variables, token=token)).json()
            if target.key in ENDS_OTHER_SESSIONS:
                staff.tokens[role] = (await login(client, staff.logins[role]))["accessToken"]
            errors = body.get("errors", [])
            label = f"{role} on {target.key}"
            if denial is None:
                if set(error_codes(body)) & REFUSALS:
                    problems.append(f"{label}: allowed, got {errors}")
                if not errors:
                    continue  # it did its (harmless) work
            else:
                if body.get("data") is not None:
                    problems.append(f"{label}: denied, got data {body['data']}")
                if [(e.get("path"), e.get("extensions")) for e in errors] != [(target.path, denial)]:
                    problems.append(f"{label}: expected {denial} at {target.path}, got {errors}")
            if tenant_hashes(database_url, staff.roots, bookkeeping_for=["T", "other"]) != before:
                problems.append(f"{label}: rows changed ({body})")
    assert not problems, "\n".join(problems)
    # the tokens used above are still good: no call ended the sessions it was made with
    for role, token in staff.tokens.items():
        body = (await gql(client, "{ me { role } }", token=token)).json()
        assert body["data"]["me"]["role"] == role, body


async def test_an_unknown_role_gets_nothing(client: httpx.AsyncClient, database_url: str, staff: Staff) -> None:
    """Deny by default: a membership whose role is neither built in nor defined passes only `@authenticated`."""
    from tests.schema.test_members import sql

    sql(
        database_url,
        "UPDATE memberships SET role = 'ghost' WHERE user_id IN "
        "(SELECT id FROM users WHERE email = 'viewer@matrix.test')",
    )
    token = (await login(client, staff.logins["viewer"]))["accessToken"]
    ghost = role_principal("ghost")
    for target in query_targets():
        denial = expected_denial(ghost, target.key)
        query, variables = document(target, [arguments(s, random_id) for s in target.steps])
        body = (await gql(client, query, variables, token=token)).json()
        got = [(e.get("path"), e.get("extensions")) for e in body.get("errors", [])]
        assert got == ([] if denial is None else [(target.path, denial)]), (target.key, body)
