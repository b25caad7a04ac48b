"""Schema-driven IDOR sweep (C-098, C-101, C-102, C-104): every field that takes an `ID`, run by each
principal of tenant A against tenant B's ids, answers exactly like an id that does not exist, and
writes nothing.

The fields are enumerated from the built schema, and their documents and arguments are generated
from the argument types, so a field added later is swept without touching this file. The schema
walking, document building and row hashing below are shared with the role matrix
(`test_role_matrix.py`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    Undefined,
    get_named_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
)
from graphql import build_schema as build_sdl
from sqlalchemy import create_engine, inspect, text

from authz import AuthMethod, Principal, PrincipalKind, Requirement, anonymous, decide, permissions_for_role
from schema import build_schema
from store.db import install_sqlite_pragmas, is_sqlite, sync_url
from tests.conftest import Tenant, error_codes, gql, login, make_tenant
from tests.invitations import invitation_token

PLAN = "professional"
MEMBER_PASSWORD = "a long enough member passphrase"
# what a sign-in or any request writes (usage_daily: each request's usage, flushed in the background);
# the audit log records A's probes in A's own chain (authz_cross_tenant): B's chain stays untouched
BOOKKEEPING_TABLES = frozenset(
    {
        "auth_sessions",
        "refresh_tokens",
        "refresh_token_families",
        "login_throttle",
        "usage_daily",
        "audit_log",
        "audit_chain_heads",
    }
)
BOOKKEEPING_COLUMNS = frozenset({("users", "last_login_at")})
KNOWN_ID_FIELDS = frozenset(
    {("Mutation", "unlockUser"), ("Mutation", "updateMemberRole"), ("Mutation", "removeMember")}
)
TENANT_HEADERS = ("X-Tenant-ID", "X-Org-ID", "X-Organization-ID")

SCHEMA = build_schema()
GRAPHQL: GraphQLSchema = SCHEMA._schema
RULES = SCHEMA.authorizer.rules


# -- schema walking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One field on the way from a root type: `parent.name`."""

    parent: str
    name: str
    field: GraphQLField = field(compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.parent, self.name)


@dataclass(frozen=True)
class Target:
    """A field to exercise, with the open path that reaches it from its root type."""

    operation: str  # "query" or "mutation"
    prefix: tuple[Step, ...]
    step: Step

    @property
    def key(self) -> tuple[str, str]:
        return self.step.key

    @property
    def steps(self) -> tuple[Step, ...]:
        return (*self.prefix, self.step)

    @property
    def path(self) -> list[str]:
        return [s.name for s in self.steps]


def required(arg: GraphQLArgument) -> bool:
    return is_non_null_type(arg.type) and arg.default_value is Undefined


def contains_id(gtype: Any, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a type is `ID`, at any nesting of lists and non-nulls, or an input object holding one."""
    named = get_named_type(gtype)
    if named.name == "ID":
        return True
    if isinstance(named, GraphQLInputObjectType) and named.name not in seen:
        return any(contains_id(f.type, seen | {named.name}) for f in named.fields.values())
    return False


def is_open(requirement: Requirement | None) -> bool:
    """A rule every signed-in member passes (none, or `@authenticated` alone)."""
    return requirement is None or (not requirement.any_of and requirement.plan is None)


def query_paths(schema: GraphQLSchema = GRAPHQL) -> dict[str, tuple[Step, ...]]:
    """The shortest path from Query to every object type, through fields any member may select:
    open rules, no list in between, no required argument."""
    query = schema.query_type
    assert query is not None
    paths: dict[str, tuple[Step, ...]] = {query.name: ()}
    frontier = [query]
    while frontier:
        following: list[GraphQLObjectType] = []
        for parent in frontier:
            for name, fdef in parent.fields.items():
                child = get_named_type(fdef.type)
                if not isinstance(child, GraphQLObjectType) or child.name in paths:
                    continue
                if is_list_type(fdef.type.of_type if is_non_null_type(fdef.type) else fdef.type):
                    continue
                if any(required(a) for a in fdef.args.values()) or not is_open(RULES.get((parent.name, name))):
                    continue
                paths[child.name] = (*paths[parent.name], Step(parent.name, name, fdef))
                following.append(child)
        frontier = following
    return paths


def reachable_targets(schema: GraphQLSchema = GRAPHQL) -> list[Target]:
    """Every field of every type reachable from Query, and every Mutation field."""
    targets = []
    for type_name, prefix in query_paths(schema).items():
        parent = schema.get_type(type_name)
        assert isinstance(parent, GraphQLObjectType)
        targets += [Target("query", prefix, Step(type_name, n, f)) for n, f in parent.fields.items()]
    if schema.mutation_type is not None:
        mutation = schema.mutation_type
        targets += [Target("mutation", (), Step(mutation.name, n, f)) for n, f in mutation.fields.items()]
    return targets


def id_taking_targets(schema: GraphQLSchema = GRAPHQL) -> list[Target]:
    return [t for t in reachable_targets(schema) if any(contains_id(a.type) for a in t.step.field.args.values())]


def selection(gtype: Any, depth: int = 0, *, wide: bool = False) -> str:
    """A small valid selection set for a type: unguarded scalars; `__typename` for objects."""
    named = get_named_type(gtype)
    if is_leaf_type(named):
        return ""
    if isinstance(named, GraphQLUnionType) or depth > 4:
        return " { __typename }"
    assert isinstance(named, GraphQLObjectType | GraphQLInterfaceType)
    fields = [
        (n, f)
        for n, f in named.fields.items()
        if not any(required(a) for a in f.args.values()) and (named.name, n) not in RULES
    ]
    leaves = [n for n, f in fields if is_leaf_type(get_named_type(f.type))]
    if leaves:
        return " { __typename " + " ".join(leaves if wide else leaves[:1]) + " }"
    for n, f in fields:
        if not is_list_type(f.type.of_type if is_non_null_type(f.type) else f.type) or depth < 3:
            return " { " + n + selection(f.type, depth + 1) + " }"
    return " { __typename }"


# -- values ---------------------------------------------------------------------------------------


def string_value(name: str, invalid: bool) -> str:
    lowered = name.lower()
    if invalid:
        # too long for any password check, empty for everything else: refused before any write
        return "x" * 5000 if "password" in lowered else ""
    for hint, value in (
        ("password", "a long enough sweep passphrase"),
        ("email", "sweep@example.test"),
        ("slug", "sweep-org"),
        ("permission", "organization:read"),
        ("role", "viewer"),
        ("name", "sweep"),
    ):
        if hint in lowered:
            return value
    return "viewer"


def fill(gtype: Any, name: str, id_value: Callable[[str], Any], *, invalid: bool = False) -> Any:
    """A value of a GraphQL input type: valid-looking, or (`invalid`) one the service refuses."""
    if isinstance(gtype, GraphQLNonNull):
        return fill(gtype.of_type, name, id_value, invalid=invalid)
    if isinstance(gtype, GraphQLList):
        return [fill(gtype.of_type, name, id_value, invalid=invalid)]
    if isinstance(gtype, GraphQLInputObjectType):
        return {
            fname: fill(f.type, fname, id_value, invalid=invalid)
            for fname, f in gtype.fields.items()
            if invalid or contains_id(f.type) or (is_non_null_type(f.type) and f.default_value is Undefined)
        }
    if isinstance(gtype, GraphQLEnumType):
        return next(iter(gtype.values))
    scalar = gtype.name
    if scalar == "ID":
        return id_value(name)
    if scalar == "String":
        return string_value(name, invalid)
    if scalar == "Boolean":
        return False
    if scalar == "Int":
        return -1 if invalid else 1
    if scalar == "Float":
        return 1.0
    if scalar == "DateTime":
        return "2020-01-01T00:00:00+00:00"
    if scalar == "JSON":
        return {}
    return "sweep"


def arguments(step: Step, id_value: Callable[[str], Any], *, invalid: bool = False) -> dict[str, Any]:
    """The arguments to send: every required one and every one holding an ID (all of them if `invalid`)."""
    return {
        n: fill(a.type, n, id_value, invalid=invalid)
        for n, a in step.field.args.items()
        if invalid or required(a) or contains_id(a.type)
    }


def document(target: Target, args: list[dict[str, Any]], *, wide: bool = False) -> tuple[str, dict[str, Any]]:
    """The operation selecting `target` through its path, with one variable per argument."""
    definitions: list[str] = []
    variables: dict[str, Any] = {}
    body = selection(target.step.field.type, wide=wide)
    for index in range(len(target.steps) - 1, -1, -1):
        step = target.steps[index]
        passed = []
        for name, value in args[index].items():
            var = f"s{index}_{name}"
            definitions.append(f"${var}: {step.field.args[name].type}")
            variables[var] = value
            passed.append(f"{name}: ${var}")
        call = step.name + (f"({', '.join(passed)})" if passed else "")
        body = f" {{ {call}{body} }}"
    header = target.operation + (f"({', '.join(sorted(definitions))})" if definitions else "")
    return header + body, variables


def role_principal(role: str, plan: str = PLAN) -> Principal:
    return Principal(
        kind=PrincipalKind.USER, permissions=permissions_for_role(role), auth_method=AuthMethod.PASSWORD, plan=plan
    )


def expected_denial(principal: Principal, key: tuple[str, str]) -> dict[str, Any] | None:
    """The extensions of the error `authz.decide` predicts for this field, or None when allowed."""
    requirement = RULES.get(key)
    if requirement is None:
        return None
    decision = decide(principal, requirement)
    if decision:
        return None
    if not principal.is_authenticated:
        return {"code": "UNAUTHENTICATED"}
    extensions: dict[str, Any] = {"code": "FORBIDDEN"}
    if decision.required_scopes:
        extensions["requiredScopes"] = [list(g) for g in decision.required_scopes]
    if decision.required_plan:
        extensions["requiredPlan"] = decision.required_plan.upper()
    return extensions


# -- rows -----------------------------------------------------------------------------------------


def table_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, ordered by primary key."""
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        install_sqlite_pragmas(engine)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            result: dict[str, list[dict[str, Any]]] = {}
            for table in sorted(insp.get_table_names()):
                order = insp.get_pk_constraint(table).get("constrained_columns") or [
                    c["name"] for c in insp.get_columns(table)
                ]
                statement = f'SELECT * FROM "{table}" ORDER BY ' + ", ".join(f'"{c}"' for c in order)
                result[table] = [dict(r) for r in conn.execute(text(statement)).mappings()]
            return result
    finally:
        engine.dispose()


def grouped_rows(url: str, roots: dict[str, str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Rows by tenant (group name -> table -> rows): a tenant is a root organization and its subtree;
    a user belongs to the tenant of its memberships, a throttle row to the tenant of its email."""
    tables = table_rows(url)
    parents = {o["id"]: o["parent_id"] for o in tables.get("organizations", [])}
    by_root = {org_id: group for group, org_id in roots.items()}

    def org_group(org_id: str | None) -> str:
        seen: set[str] = set()
        while org_id is not None and org_id not in seen:
            if org_id in by_root:
                return by_root[org_id]
            seen.add(org_id)
            org_id = parents.get(org_id)
        return "other"

    user_group: dict[str, str] = {}
    for m in tables.get("memberships", []):
        g = org_group(m["organization_id"])
        user_group[m["user_id"]] = g if user_group.get(m["user_id"], g) == g else "shared"
    email_group = {u["email_key"]: user_group.get(u["id"], "other") for u in tables.get("users", [])}

    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table, rows in tables.items():
        for row in rows:
            if table == "organizations":
                g = org_group(row["id"])
            elif table == "audit_chain_heads":
                g = org_group(row["chain"])
            elif "organization_id" in row:
                g = org_group(row["organization_id"])
            elif table == "users":
                g = user_group.get(row["id"], "other")
            elif "user_id" in row:
                g = user_group.get(row["user_id"], "other")
            elif "account_key" in row:
                g = email_group.get(row["account_key"], "other")
            else:
                g = "other"
            grouped.setdefault(g, {}).setdefault(table, []).append(row)
    return grouped


def row_hashes(rows: dict[str, list[dict[str, Any]]], *, bookkeeping: bool = False) -> dict[str, str]:
    """sha256 per table of its rows' repr; `bookkeeping` leaves out what a sign-in or a request may touch."""
    hashes = {}
    for table, table_rows_ in sorted(rows.items()):
        if bookkeeping and table in BOOKKEEPING_TABLES:
            continue
        kept = [
            tuple((k, v) for k, v in sorted(r.items()) if not (bookkeeping and (table, k) in BOOKKEEPING_COLUMNS))
            for r in table_rows_
        ]
        hashes[table] = hashlib.sha256(repr(kept).encode()).hexdigest()
    return hashes


def tenant_hashes(url: str, roots: dict[str, str], bookkeeping_for: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    skip = set(bookkeeping_for)
    return {g: row_hashes(rows, bookkeeping=g in skip) for g, rows in grouped_rows(url, roots).items()}


# -- building tenants through the API ------------------------------------------------------------------

ADD_MEMBER = """
mutation($e: String!, $r: String!) { addMember(email: $e, role: $r) { invitation { id } } }
"""
ACCEPT = "mutation($t: String!, $p: String!) { acceptInvitation(token: $t, password: $p) { accessToken } }"
CREATE_ROLE = "mutation($i: RoleInput!) { createRole(input: $i) { name } }"
CREATE_CHILD = "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id slug } }"


async def call(client: httpx.AsyncClient, query: str, variables: dict[str, Any], token: str) -> dict[str, Any]:
    body = (await gql(client, query, variables, token=token)).json()
    assert not body.get("errors"), body
    assert body.get("data"), body
    return body["data"]  # type: ignore[no-any-return]


async def invite(client: httpx.AsyncClient, owner: str, email: str, role: str) -> str:
    data = await call(client, ADD_MEMBER, {"e": email, "r": role}, owner)
    return data["addMember"]["invitation"]["id"]  # type: ignore[no-any-return]


async def member_token(client: httpx.AsyncClient, database_url: str, owner: str, email: str, role: str) -> str:
    """Invite a member with `role` and accept the emailed invitation: the member's access token."""
    await invite(client, owner, email, role)
    token = await invitation_token(database_url, email)
    body = (await gql(client, ACCEPT, {"t": token, "p": MEMBER_PASSWORD})).json()
    assert body.get("data"), body
    return body["data"]["acceptInvitation"]["accessToken"]  # type: ignore[no-any-return]


@dataclass
class Side:
    tenant: Tenant
    child_slug: str
    role_name: str
    tokens: dict[str, str]


async def build_side(client: httpx.AsyncClient, database_url: str, slug: str) -> Side:
    """A tenant with an owner, an admin and a viewer, a custom role held by an invited member (a pending
    invitation), and a child organization."""
    tenant = await make_tenant(database_url, slug=slug, email=f"owner@{slug}.test", plan=PLAN)
    owner = (await login(client, tenant))["accessToken"]
    tokens = {"owner": owner}
    for role in ("admin", "viewer"):
        tokens[role] = await member_token(client, database_url, owner, f"{role}@{slug}.test", role)
    role_name = f"{slug}-auditor"
    await call(
        client,
        CREATE_ROLE,
        {
            "i": {
                "name": role_name,
                "description": "reads the audit log",
                "permissions": ["audit:read"],
                "inherits": ["viewer"],
            }
        },
        owner,
    )
    await invite(client, owner, f"pending@{slug}.test", role_name)
    child_slug = f"{slug}-eu"
    await call(client, CREATE_CHILD, {"i": {"slug": child_slug, "name": f"{slug} EU"}}, owner)
    return Side(tenant, child_slug, role_name, tokens)


@dataclass
class World:
    a: Side
    b: Side
    b_ids: dict[str, list[str]]  # table -> ids of B's rows
    b_secrets: list[str]  # strings only B's rows hold: ids, slugs, emails

    @property
    def roots(self) -> dict[str, str]:
        return {"A": self.a.tenant.org_id, "B": self.b.tenant.org_id}

    def principals(self) -> dict[str, tuple[str | None, Principal]]:
        """A's principals: name -> (token, the principal `decide` sees)."""
        found: dict[str, tuple[str | None, Principal]] = {
            role: (token, role_principal(role)) for role, token in self.a.tokens.items()
        }
        found["anonymous"] = (None, anonymous())
        return found


@pytest.fixture
async def world(app: Any, client: httpx.AsyncClient, database_url: str) -> World:
    a = await build_side(client, database_url, "alpha")
    b = await build_side(client, database_url, "bravo")
    # B's requests so far are counted now: a background flush during a sweep would change B's usage rows
    await app.state.services.usage.flush()
    b_rows = grouped_rows(database_url, {"A": a.tenant.org_id, "B": b.tenant.org_id})["B"]
    b_ids = {t: [r["id"] for r in rows] for t, rows in b_rows.items() if rows and "id" in rows[0]}
    secrets = [i for ids in b_ids.values() for i in ids]
    secrets += [b.tenant.slug, b.child_slug, b.role_name, *(u["email"] for u in b_rows["users"])]
    assert set(b_ids) >= {"organizations", "users", "memberships", "roles", "invitations", "auth_sessions"}
    return World(a, b, b_ids, secrets)


# -- the sweep ------------------------------------------------------------------------------------


def _singular(table: str) -> str:
    return table.replace("_", "").removesuffix("s")


def id_kind(arg_name: str, field_name: str, tables: Iterable[str]) -> str | None:
    """Which table an ID argument names: `membershipId` -> memberships, `userId` -> users; a bare `id`
    takes the table the field's name mentions (`rotateApiKey(id:)` -> api_keys). None when unsure."""
    base = arg_name.lower().removesuffix("ids").removesuffix("id").replace("_", "")
    alias = {"org": "organization", "tenant": "organization"}
    base = alias.get(base, base)
    names = {_singular(t): t for t in tables}
    if base:
        return names.get(base) or next((t for s, t in names.items() if s.endswith(base)), None)
    lowered = field_name.lower()
    matches = [s for s in names if s in lowered]
    return names[max(matches, key=len)] if matches else None


def b_candidates(world: World, target: Target) -> list[Callable[[str], str]]:
    """One id chooser per run: the i-th run fills every ID argument (or input field) with the i-th of
    B's ids of its kind, or of all B's ids when its kind is unclear."""
    all_ids = sorted(i for ids in world.b_ids.values() for i in ids)

    def ids_for(name: str) -> list[str]:
        kind = id_kind(name, target.step.name, world.b_ids)
        return world.b_ids[kind] if kind else all_ids

    runs = max((len(ids_for(n)) for s in target.steps for n in s.field.args), default=1)
    return [lambda name, i=i: ids_for(name)[i % len(ids_for(name))] for i in range(runs)]


def random_id(_: str) -> str:
    return str(uuid.uuid4())


def without_budget(body: dict[str, Any]) -> dict[str, Any]:
    """The body without what is left of the caller's own cost budget, which moves with every request and
    says nothing about the id asked for."""
    cost = body.get("extensions", {}).get("cost")
    if isinstance(cost, dict):
        body["extensions"]["cost"] = {"requested": cost.get("requested")}
    return body


async def run(
    client: httpx.AsyncClient, target: Target, id_value: Callable[[str], str], token: str | None, **kwargs: Any
) -> tuple[dict[str, Any], int]:
    query, variables = document(target, [arguments(s, id_value) for s in target.steps], wide=True)
    response = await gql(client, query, variables, token=token, **kwargs)
    return without_budget(response.json()), response.status_code


def value_at(data: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def test_enumeration_finds_the_known_id_fields() -> None:
    """A broken enumerator would sweep nothing and pass: it must find at least the fields known today."""
    found = {t.key for t in id_taking_targets()}
    assert found >= KNOWN_ID_FIELDS, sorted(found)
    for target in id_taking_targets():
        assert target.key in RULES, f"{target.key} takes an ID but has no authorization rule"


def test_enumeration_looks_through_lists_non_nulls_and_inputs() -> None:
    sdl = """
    input Inner { ref: [ID!] }
    input Outer { inner: Inner, note: String }
    input Loop { self: Loop, name: String }
    type Thing { id: ID!  part(partId: ID): String  plain(n: Int): Int }
    type Query { thing: Thing  byIds(ids: [ID!]!): [Thing!]!  deep(input: Outer!): Thing  loop(l: Loop): Int }
    type Mutation { touch(input: Outer): Boolean  noop(flag: Boolean): Boolean }
    """
    keys = {t.key for t in id_taking_targets(build_sdl(sdl))}
    assert keys == {("Query", "byIds"), ("Query", "deep"), ("Thing", "part"), ("Mutation", "touch")}


def test_id_kinds_follow_argument_and_field_names() -> None:
    tables = ["organizations", "users", "memberships", "roles", "invitations", "api_keys", "auth_sessions"]
    assert id_kind("membershipId", "removeMember", tables) == "memberships"
    assert id_kind("userId", "unlockUser", tables) == "users"
    assert id_kind("orgId", "x", tables) == "organizations"
    assert id_kind("id", "rotateApiKey", tables) == "api_keys"
    assert id_kind("sessionId", "revokeSession", tables) == "auth_sessions"
    assert id_kind("id", "node", tables) is None


async def test_every_id_field_answers_b_ids_like_missing_ones(client, database_url: str, world: World) -> None:
    """C-098/C-101/C-104: every ID-taking field, as each principal of A, with every fitting id of B:
    NOT_FOUND for who holds the permission (the very body an unknown id gets), FORBIDDEN or
    UNAUTHENTICATED at the field for who does not, never B's data, nothing written anywhere."""
    targets = id_taking_targets()
    assert targets
    before = tenant_hashes(database_url, world.roots, bookkeeping_for=["A"])
    problems: list[str] = []
    runs = 0
    for target in targets:
        for who, (token, principal) in world.principals().items():
            denial = expected_denial(principal, target.key)
            baseline, baseline_status = await run(client, target, random_id, token)
            for chooser in b_candidates(world, target):
                body, status = await run(client, target, chooser, token)
                runs += 1
                label = f"{target.key} as {who}"
                leaked = [s for s in world.b_secrets if s in str(body)]
                if leaked:
                    problems.append(f"{label}: response holds B's {leaked}: {body}")
                if (body, status) != (baseline, baseline_status):
                    problems.append(
                        f"{label}: B's id answers {status} {body}, an unknown id {baseline_status} {baseline}"
                    )
                if value_at(body.get("data"), target.path) is not None:
                    problems.append(f"{label}: returned data {body['data']}")
                errors = body.get("errors", [])
                if denial is None:
                    if error_codes(body) != ["NOT_FOUND"] or errors[0].get("path") != target.path:
                        problems.append(f"{label}: expected NOT_FOUND at {target.path}, got {errors}")
                elif [(e.get("path"), e.get("extensions")) for e in errors] != [(target.path, denial)]:
                    problems.append(f"{label}: expected {denial} at {target.path}, got {errors}")
    assert not problems, "\n".join(problems)
    assert runs >= len(KNOWN_ID_FIELDS) * 4
    after = tenant_hashes(database_url, world.roots, bookkeeping_for=["A"])
    assert after == before


NOT_FOUND_ORG = "query($s: String) { organization(slug: $s) { id slug name } }"
UPDATE_ROLE = "mutation($n: String!, $i: RoleInput!) { updateRole(name: $n, input: $i) { name permissions inherits } }"
DELETE_ROLE = "mutation($n: String!) { deleteRole(name: $n) }"


async def test_string_keys_of_b_answer_like_unknown_ones(client, database_url: str, world: World) -> None:
    """Slugs and role names are keys too: B's answer exactly like names nobody holds, and nothing changes."""
    before = tenant_hashes(database_url, world.roots, bookkeeping_for=["A"])
    unknown_slug = f"nobody-{uuid.uuid4().hex[:8]}"
    unknown_role = f"nobody-{uuid.uuid4().hex[:8]}"
    cases = [
        (
            "organization",
            NOT_FOUND_ORG,
            lambda key: {"s": key},
            [world.b.tenant.slug, world.b.child_slug],
            unknown_slug,
        ),
        (
            "updateRole",
            UPDATE_ROLE,
            lambda key: {"n": key, "i": {"name": key, "permissions": ["organization:read"], "inherits": []}},
            [world.b.role_name],
            unknown_role,
        ),
        ("deleteRole", DELETE_ROLE, lambda key: {"n": key}, [world.b.role_name], unknown_role),
    ]
    for who, (token, principal) in world.principals().items():
        for name, query, variables, b_keys, unknown in cases:
            root = "Query" if name == "organization" else "Mutation"
            denial = expected_denial(principal, (root, name))
            baseline = without_budget((await gql(client, query, variables(unknown), token=token)).json())
            if denial is None:
                assert error_codes(baseline) == ["NOT_FOUND"], (who, name, baseline)
            else:
                assert [e["extensions"] for e in baseline["errors"]] == [denial], (who, name, baseline)
            for key in b_keys:
                body = without_budget((await gql(client, query, variables(key), token=token)).json())
                assert body == baseline, (who, name, key, body)
    # A's own child answers, so the NOT_FOUND above is about B, not about slugs in general
    body = (await gql(client, NOT_FOUND_ORG, {"s": world.a.child_slug}, token=world.a.tokens["viewer"])).json()
    assert body["data"]["organization"]["slug"] == world.a.child_slug, body
    assert tenant_hashes(database_url, world.roots, bookkeeping_for=["A"]) == before


TENANT_VIEW = """
query {
  me { role organization { id slug } }
  organization { id slug children { slug } members { edges { node { id } } } }
}
"""


async def test_tenant_headers_and_query_parameters_are_ignored(client, database_url: str, world: World) -> None:
    """C-102: the tenant comes from the token alone; headers or `?org=` naming B change nothing."""
    owner = world.a.tokens["owner"]
    b_org = world.b.tenant.org_id
    b_membership = world.b_ids["memberships"][0]
    remove = "mutation($m: ID!) { removeMember(membershipId: $m) }"
    plain = without_budget((await gql(client, TENANT_VIEW, token=owner)).json())
    assert plain["data"]["organization"]["id"] == world.a.tenant.org_id, plain
    plain_remove = without_budget((await gql(client, remove, {"m": b_membership}, token=owner)).json())
    assert error_codes(plain_remove) == ["NOT_FOUND"]
    before = tenant_hashes(database_url, world.roots, bookkeeping_for=["A"])
    variants: list[tuple[str, dict[str, str]]] = [("/graphql", {h: b_org}) for h in TENANT_HEADERS]
    variants += [
        ("/graphql", dict.fromkeys(TENANT_HEADERS, b_org)),
        (f"/graphql?org={b_org}", {}),
        (f"/graphql?org={world.b.tenant.slug}", {h: world.b.tenant.slug for h in TENANT_HEADERS}),
    ]
    for url, headers in variants:
        for query, variables, expected in ((TENANT_VIEW, {}, plain), (remove, {"m": b_membership}, plain_remove)):
            response = await client.post(
                url,
                json={"query": query, "variables": variables},
                headers={**headers, "Authorization": f"Bearer {owner}"},
            )
            body = without_budget(response.json())
            assert body == expected, (url, headers, body)
            assert not [s for s in world.b_secrets if s in response.text], (url, headers)
    assert tenant_hashes(database_url, world.roots, bookkeeping_for=["A"]) == before


async def test_sibling_fields_resolve_on_one_session(client, world: World) -> None:
    """Sibling fields resolve concurrently and share the request's database session; each one waits its
    turn instead of failing with INTERNAL (seen on PostgreSQL)."""
    body = (await gql(client, TENANT_VIEW, token=world.a.tokens["owner"])).json()
    assert "errors" not in body, body
    assert body["data"]["me"]["organization"] == {"id": world.a.tenant.org_id, "slug": "alpha"}
    assert body["data"]["organization"]["children"] == [{"slug": world.a.child_slug}]
    # the owner, the admin and the viewer; the invited member has not accepted
    assert len(body["data"]["organization"]["members"]["edges"]) == 3
