"""Field authorization, decided once per operation before anything executes.

At schema build time every field's rule is read from its directive (through the guard the directive
helpers attach) into a map `(type, field) -> Requirement`. For each operation, the selection set is
walked through fragments, inline fragments, aliases and abstract types; every selected field whose
rule `authz.decide` refuses is recorded. The walk's outcome depends only on the document and on what
the principal holds, so it is cached per (document, permission set, plan).

Denied fields then resolve to `null` with a `FORBIDDEN` error at their path, and the rest executes; or,
with `reject_unauthorized`, the whole operation is refused before execution (Apollo Router's
`reject_unauthorized`). A field selected through an interface must satisfy the interface's rule and
the rule of every implementation, since any of them may answer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    default_field_resolver,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

from authz import Decision, Principal, PrincipalKind, Requirement, decide
from schema.directives import (
    MFA_ENROLLMENT_REQUIRED,
    PASSWORD_CHANGE_REQUIRED,
    denial_error,
    requirement_from_directives,
    requirement_of,
)
from schema.introspection import IntrospectionFailed, IntrospectionFilter, introspection_fields
from store.telemetry import span

log = logging.getLogger("portcullis.graphql")

RuleMap = Mapping[tuple[str, str], Requirement]

# An API key never mints or ends sessions (C-123), nor has a second factor: these root mutations are
# refused to any key, whatever its scopes; the vocabulary has no scope that grants them.
KEY_REFUSED_MUTATIONS: frozenset[str] = frozenset(
    {
        "login",
        "refreshToken",
        "acceptInvitation",
        "logout",
        "changePassword",
        "enrollTotp",
        "confirmTotp",
        "disableTotp",
        "requestPasswordReset",
        "resetPassword",
        "sendEmailVerification",
        "verifyEmail",
        "changeEmail",
        "confirmEmailChange",
        "startSsoLink",
        "revokeSession",
        "revokeOtherSessions",
        "reauthenticate",
    }
)
_KEY_REFUSAL = Decision(allowed=False, reason="an API key cannot sign in or mint tokens")

# What a session that must enroll a second factor first may do (requireMfa, docs/authentication.md).
MFA_ENROLLMENT_ROOT_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Query", "me"),
        ("Mutation", "enrollTotp"),
        ("Mutation", "confirmTotp"),
        ("Mutation", "logout"),
        ("Mutation", "login"),
        ("Mutation", "refreshToken"),
        ("Mutation", "acceptInvitation"),
        ("Mutation", "requestPasswordReset"),
        ("Mutation", "resetPassword"),
        ("Mutation", "verifyEmail"),
        ("Mutation", "confirmEmailChange"),
    }
)
_MFA_ENROLLMENT_REFUSAL = Decision(allowed=False, reason=MFA_ENROLLMENT_REQUIRED)

# What a password session whose password is past the policy's maximum age may do (docs/passwords-and-fresh-auth.md).
PASSWORD_CHANGE_ROOT_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Query", "me"),
        ("Mutation", "changePassword"),
        ("Mutation", "logout"),
        ("Mutation", "login"),
        ("Mutation", "refreshToken"),
        ("Mutation", "acceptInvitation"),
        ("Mutation", "requestPasswordReset"),
        ("Mutation", "resetPassword"),
        ("Mutation", "verifyEmail"),
        ("Mutation", "confirmEmailChange"),
    }
)
_PASSWORD_CHANGE_REFUSAL = Decision(allowed=False, reason=PASSWORD_CHANGE_REQUIRED)


def type_rule(schema: GraphQLSchema, gtype: GraphQLNamedType) -> Requirement | None:
    """The rule written on a type (Apollo's semantics: every field returning the type requires it).

    For an interface, the rules of the interface and of every implementation apply together, since
    any of them may answer.
    """

    def own(t: GraphQLNamedType) -> Requirement | None:
        definition = (t.extensions or {}).get("strawberry-definition")
        return requirement_from_directives(getattr(definition, "directives", None))

    found = [own(gtype)]
    if isinstance(gtype, GraphQLInterfaceType):
        found.extend(own(impl) for impl in schema.get_implementations(gtype).objects)
    return _combine([r for r in found if r is not None])


def collect_rules(schema: GraphQLSchema) -> tuple[dict[tuple[str, str], Requirement], set[tuple[str, str]]]:
    """Every field's effective rule (its own and its return type's), and the fields whose rule comes
    at least partly from their return type."""
    rules: dict[tuple[str, str], Requirement] = {}
    from_types: set[tuple[str, str]] = set()
    for type_name, gtype in schema.type_map.items():
        if type_name.startswith("__") or not isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
            continue
        for field_name, field in gtype.fields.items():
            definition = (field.extensions or {}).get("strawberry-definition")
            own = requirement_of(definition) if definition is not None else None
            inherited = type_rule(schema, get_named_type(field.type))
            combined = _combine([r for r in (own, inherited) if r is not None])
            if combined is not None:
                rules[(type_name, field_name)] = combined
            if inherited is not None:
                from_types.add((type_name, field_name))
    return rules, from_types


def _guarded_resolver(resolve: Any, requirement: Requirement) -> Any:
    """A resolver that refuses first, for fields guarded by their return type's rule."""

    def guarded(source: Any, info: Any, **kwargs: Any) -> Any:
        ctx = info.context
        denied = getattr(ctx, "denied_fields", None)
        decision = decide(ctx.principal, requirement) if denied is None else denied.get(id(info.field_nodes[0]))
        if decision is not None and not decision:
            raise denial_error(ctx.principal, decision)
        return (
            resolve(source, info, **kwargs) if resolve is not None else default_field_resolver(source, info, **kwargs)
        )

    return guarded


def _combine(requirements: list[Requirement]) -> Requirement | None:
    """All of several rules at once (interface and implementations): AND of their alternatives."""
    if not requirements:
        return None
    if len(requirements) == 1:
        return requirements[0]
    groups: tuple[tuple[Any, ...], ...] = ((),)
    plan = None
    for r in requirements:
        if r.any_of:
            groups = tuple(tuple(dict.fromkeys(g + h)) for g in groups for h in r.any_of)
        plan = r.plan or plan
    return Requirement(authenticated=True, any_of=groups if groups != ((),) else (), plan=plan)


@dataclass(frozen=True)
class OperationDecisions:
    document: DocumentNode  # held so that the node ids below stay unique while cached
    denied: dict[int, Decision]
    denied_paths: tuple[tuple[str, ...], ...]
    operation: OperationDefinitionNode | None = None
    introspection: tuple[FieldNode, ...] = ()


class Authorizer:
    def __init__(self, schema: GraphQLSchema, cache_size: int = 2048) -> None:
        self.schema = schema
        self.rules, from_types = collect_rules(schema)
        for type_name, field_name in from_types:
            parent = schema.type_map[type_name]
            assert isinstance(parent, GraphQLObjectType | GraphQLInterfaceType)
            field = parent.fields[field_name]
            field.resolve = _guarded_resolver(field.resolve, self.rules[(type_name, field_name)])
        self.introspection = IntrospectionFilter(schema, self.rules)
        self._cache: OrderedDict[tuple[Any, ...], OperationDecisions] = OrderedDict()
        self._cache_size = cache_size

    def requirement(self, parent: GraphQLNamedType, field_name: str) -> Requirement | None:
        if isinstance(parent, GraphQLInterfaceType):
            found = [self.rules[(parent.name, field_name)]] if (parent.name, field_name) in self.rules else []
            for impl in self.schema.get_implementations(parent).objects:
                if (impl.name, field_name) in self.rules:
                    found.append(self.rules[(impl.name, field_name)])
            return _combine(found)
        return self.rules.get((parent.name, field_name))

    def decide_operation(
        self, document: DocumentNode, operation_name: str | None, principal: Principal
    ) -> OperationDecisions:
        key = (
            id(document),
            operation_name,
            principal.kind,
            principal.effective_permissions,
            principal.plan,
            principal.mfa_enrollment_required,
            principal.password_change_required,
        )
        cached = self._cache.get(key)
        if cached is not None and cached.document is document:
            self._cache.move_to_end(key)
            return cached
        decisions = self._walk_document(document, operation_name, principal)
        self._cache[key] = decisions
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return decisions

    def _walk_document(
        self, document: DocumentNode, operation_name: str | None, principal: Principal
    ) -> OperationDecisions:
        operation: OperationDefinitionNode | None = None
        fragments: dict[str, FragmentDefinitionNode] = {}
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                fragments[definition.name.value] = definition
            elif isinstance(definition, OperationDefinitionNode) and (
                operation_name is None or (definition.name and definition.name.value == operation_name)
            ):
                operation = operation or definition
        denied: dict[int, Decision] = {}
        paths: list[tuple[str, ...]] = []
        if operation is None:
            return OperationDecisions(document, denied, ())
        root = self.schema.get_root_type(operation.operation)
        if root is not None:
            self._walk(operation.selection_set, root, (), fragments, principal, denied, paths, frozenset())
        return OperationDecisions(
            document, denied, tuple(paths), operation, tuple(introspection_fields(document, operation))
        )

    def _walk(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType,
        path: tuple[str, ...],
        fragments: dict[str, FragmentDefinitionNode],
        principal: Principal,
        denied: dict[int, Decision],
        paths: list[tuple[str, ...]],
        visiting: frozenset[str],
    ) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                self._field(selection, parent, path, fragments, principal, denied, paths, visiting)
            elif isinstance(selection, InlineFragmentNode):
                target = (
                    self.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
                )
                if target is not None:
                    self._walk(selection.selection_set, target, path, fragments, principal, denied, paths, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in visiting:
                    continue
                target = self.schema.get_type(fragment.type_condition.name.value)
                if target is not None:
                    self._walk(
                        fragment.selection_set, target, path, fragments, principal, denied, paths, visiting | {name}
                    )

    def _field(
        self,
        node: FieldNode,
        parent: GraphQLNamedType,
        path: tuple[str, ...],
        fragments: dict[str, FragmentDefinitionNode],
        principal: Principal,
        denied: dict[int, Decision],
        paths: list[tuple[str, ...]],
        visiting: frozenset[str],
    ) -> None:
        name = node.name.value
        if name.startswith("__") or not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return
        field = parent.fields.get(name)
        if field is None:
            return
        here = (*path, node.alias.value if node.alias else name)
        if (
            not path
            and principal.kind is PrincipalKind.API_KEY
            and name in KEY_REFUSED_MUTATIONS
            and parent is self.schema.mutation_type
        ):
            denied[id(node)] = _KEY_REFUSAL
            paths.append(here)
            return
        if not path and principal.mfa_enrollment_required and (parent.name, name) not in MFA_ENROLLMENT_ROOT_FIELDS:
            denied[id(node)] = _MFA_ENROLLMENT_REFUSAL
            paths.append(here)
            return
        if not path and principal.password_change_required and (parent.name, name) not in PASSWORD_CHANGE_ROOT_FIELDS:
            denied[id(node)] = _PASSWORD_CHANGE_REFUSAL
            paths.append(here)
            return
        requirement = self.requirement(parent, name)
        if requirement is not None:
            decision = decide(principal, requirement)
            if not decision:
                denied[id(node)] = decision
                paths.append(here)
                return
        if node.selection_set is not None:
            self._walk(
                node.selection_set, get_named_type(field.type), here, fragments, principal, denied, paths, visiting
            )

    def report(self) -> Iterator[tuple[str, str, Requirement | None]]:
        for type_name, gtype in sorted(self.schema.type_map.items()):
            if type_name.startswith("__") or not isinstance(gtype, GraphQLObjectType | GraphQLInterfaceType):
                continue
            for field_name in gtype.fields:
                yield type_name, field_name, self.rules.get((type_name, field_name))


class Authorization(SchemaExtension):
    """Takes every field decision of the operation before execution (runs after validation)."""

    def __init__(self, *, authorizer: Authorizer, reject_unauthorized: bool = False) -> None:
        self.authorizer = authorizer
        self.reject_unauthorized = reject_unauthorized

    decisions: OperationDecisions | None = None

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None and not ec.pre_execution_errors:
            ctx = ec.context
            with span("authorize"):
                decisions = self.authorizer.decide_operation(document, ec.operation_name, ctx.principal)
            self.decisions = decisions
            ctx.denied_fields = decisions.denied
            ctx.denied_paths = decisions.denied_paths
            # a key's mutation is all or nothing: any refused field refuses the operation (C-119)
            key_mutation = (
                ctx.principal.kind is PrincipalKind.API_KEY
                and decisions.operation is not None
                and decisions.operation.operation.value == "mutation"
            )
            if decisions.denied and (self.reject_unauthorized or key_mutation):
                errors = []
                for node_id, path in zip(decisions.denied, decisions.denied_paths, strict=True):
                    exc = denial_error(ctx.principal, decisions.denied[node_id])
                    errors.append(GraphQLError(str(exc), path=list(path), original_error=exc))
                ec.pre_execution_errors = errors
                response = getattr(ctx, "response", None)
                if response is not None:
                    response.status_code = 403  # a valid credential refused by policy
        yield

    def on_execute(self) -> Iterator[None]:
        yield
        decisions = self.decisions
        result = self.execution_context.result
        if (
            decisions is None
            or not decisions.introspection
            or decisions.operation is None
            or result is None
            or result.data is None
        ):
            return
        ctx = self.execution_context.context
        try:
            self.authorizer.introspection.replace(
                result.data,
                decisions.document,
                decisions.operation,
                list(decisions.introspection),
                ctx.principal,
                self.execution_context.variables,
            )
        except IntrospectionFailed as exc:
            # fail closed (C-129): nothing the operation resolved on the full schema leaves
            result.data, result.errors = None, exc.errors
        except Exception as exc:
            log.error(
                "introspection not answered",
                exc_info=exc,
                extra={"request_id": getattr(ctx.principal, "request_id", None)},
            )
            result.data, result.errors = None, [GraphQLError("introspection not answered", original_error=exc)]


# Root fields without a rule, on purpose: they are how a caller obtains a credential, or prove control of
# an address with an emailed token, or learn how an organization's members sign in.
PUBLIC_ROOT_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Query", "signInOptions"),
        ("Mutation", "login"),
        ("Mutation", "refreshToken"),
        ("Mutation", "acceptInvitation"),
        ("Mutation", "requestPasswordReset"),
        ("Mutation", "resetPassword"),
        ("Mutation", "verifyEmail"),
        ("Mutation", "confirmEmailChange"),
    }
)


def describe(requirement: Requirement | None) -> str:
    if requirement is None:
        return ""
    parts = []
    if requirement.any_of:
        parts.append("@requiresScopes(" + " | ".join(" & ".join(str(p) for p in g) for g in requirement.any_of) + ")")
    if requirement.plan:
        parts.append(f"@requiresPlan({requirement.plan.upper()})")
    return " ".join(parts) or "@authenticated"


def roles_allowed(requirement: Requirement) -> list[str]:
    """The built-in roles whose members (on the top plan) meet `requirement` (`authz-report`)."""
    from authz import AuthMethod, PrincipalKind, permissions_for_role
    from authz.roles import ROLE_ORDER

    return [
        role.value
        for role in ROLE_ORDER
        if decide(
            Principal(
                kind=PrincipalKind.USER,
                permissions=permissions_for_role(role.value),
                auth_method=AuthMethod.PASSWORD,
                plan="enterprise",
            ),
            requirement,
        )
    ]


def field_table(authorizer: Authorizer) -> list[dict[str, Any]]:
    """Every field of the schema with its rule and the built-in roles it admits (`authz-report`)."""
    from authz.roles import ROLE_ORDER

    roots = {t.name for t in (authorizer.schema.query_type, authorizer.schema.mutation_type) if t is not None}
    rows = []
    for type_name, field_name, requirement in authorizer.report():
        if requirement is not None:
            rule, allowed = describe(requirement), roles_allowed(requirement)
        elif (type_name, field_name) in PUBLIC_ROOT_FIELDS:
            rule, allowed = "public", ["anonymous", *(r.value for r in ROLE_ORDER)]
        elif type_name in roots:
            rule, allowed = "UNRULED", []
        else:
            rule, allowed = "as its parent field", []
        rows.append({"type": type_name, "field": field_name, "rule": rule, "roles": allowed})
    return rows
