"""Per-tenant custom roles: named permission sets that may inherit from built-in or other custom roles.

The rules, all enforced here as pure functions over data:

- A role name is 1-63 characters of lowercase letters, digits, `-` and `_`, and is not a built-in name
  (`viewer`, `analyst`, `manager`, `admin`, `owner`, `platform`): built-in roles cannot be redefined.
- Permissions are the vocabulary only: the contract's and the team's own (`authz.vocabulary`). `platform:*`
  permissions are never grantable inside a tenant, and the `platform` role cannot be inherited.
- A custom role holds its own permissions plus, transitively, those of every role it inherits.
- The inheritance graph is acyclic and names only known roles; `check_role_graph` refuses anything else.
- Deny by default: an unknown role resolves to nothing, and so does a `platform:*` permission reached
  through a custom role. Resolution terminates even on cyclic data that slipped past validation.
- Nobody can create or grant a role holding a permission they do not hold themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from authz.permissions import ALL_PERMISSION_NAMES, Permission
from authz.policy import ALLOW, Decision
from authz.roles import BUILTIN_ROLE_PERMISSIONS, PLATFORM_ROLE, ROLE_ORDER
from authz.vocabulary import is_permission, is_tenant_permission, permissions_for_role, tenant_permissions

BUILTIN_ROLE_NAMES: frozenset[str] = frozenset(BUILTIN_ROLE_PERMISSIONS)
_NAME = re.compile(r"[a-z0-9_-]{1,63}")
_ECHO_LIMIT = 64


@dataclass(frozen=True, slots=True)
class RoleDefinition:
    name: str
    permissions: frozenset[str]
    inherits: tuple[str, ...] = ()
    description: str | None = None


class RoleError(ValueError):
    """A refused role definition or grant; the message is safe to show the caller."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _echo(value: str) -> str:
    return repr(value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "...")


def validate_role_name(name: str) -> None:
    if name in BUILTIN_ROLE_NAMES:
        raise RoleError(f"{_echo(name)} is a built-in role and cannot be redefined.", field="name")
    if not _NAME.fullmatch(name):
        raise RoleError("A role name is 1 to 63 characters: lowercase letters, digits, '-' and '_'.", field="name")


def parse_permissions(names: Iterable[str]) -> frozenset[str]:
    """The named permissions: built-in ones as `Permission` members, the team's own as plain names."""
    if isinstance(names, str):
        names = (names,)
    result: set[str] = set()
    unknown: set[str] = set()
    for name in names:
        if not is_permission(name):
            unknown.add(name)
            continue
        if not is_tenant_permission(name):
            raise RoleError(f"{_echo(name)} cannot be granted inside an organization.", field="permissions")
        result.add(Permission(name) if name in ALL_PERMISSION_NAMES else name)
    if unknown:
        listed = ", ".join(_echo(n) for n in sorted(unknown))
        raise RoleError(f"Unknown permission: {listed}.", field="permissions")
    return frozenset(result)


def resolve_permissions(role: str, custom: Mapping[str, RoleDefinition]) -> frozenset[str]:
    """Everything `role` grants; built-in names always mean the built-in role, whatever `custom` holds."""
    if role in BUILTIN_ROLE_PERMISSIONS:
        return permissions_for_role(role)
    if role not in custom:
        return frozenset()
    held: set[str] = set()
    seen: set[str] = set()
    pending = [role]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == PLATFORM_ROLE:
            continue
        if name in BUILTIN_ROLE_PERMISSIONS:
            held |= permissions_for_role(name)
        elif name in custom:
            definition = custom[name]
            held |= definition.permissions
            pending.extend(definition.inherits)
    return frozenset(held) & tenant_permissions()


def _find_cycle(custom: Mapping[str, RoleDefinition]) -> list[str] | None:
    done: set[str] = set()
    for start in sorted(custom):
        if start in done:
            continue
        path: list[str] = [start]
        on_path: set[str] = {start}
        stack = [iter(custom[start].inherits)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if child in on_path:
                return [*path[path.index(child) :], child]
            if child in done or child not in custom or child in BUILTIN_ROLE_NAMES:
                continue
            path.append(child)
            on_path.add(child)
            stack.append(iter(custom[child].inherits))
    return None


def check_role_graph(custom: Mapping[str, RoleDefinition]) -> None:
    for key in sorted(custom):
        definition = custom[key]
        if key != definition.name:
            raise RoleError(f"Role {_echo(key)} is stored under another name.", field="name")
        if key in BUILTIN_ROLE_NAMES:
            raise RoleError(f"{_echo(key)} is a built-in role and cannot be redefined.", field="name")
        for parent in definition.inherits:
            if parent == key:
                raise RoleError(f"Role {_echo(key)} cannot inherit from itself: {key} -> {key}.", field="inherits")
            if parent == PLATFORM_ROLE:
                raise RoleError("The platform role cannot be inherited inside an organization.", field="inherits")
            if parent not in BUILTIN_ROLE_NAMES and parent not in custom:
                raise RoleError(f"Role {_echo(key)} inherits unknown role {_echo(parent)}.", field="inherits")
    cycle = _find_cycle(custom)
    if cycle is not None:
        raise RoleError(f"Role inheritance forms a cycle: {' -> '.join(cycle)}.", field="inherits")


def _missing(held: frozenset[str], needed: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in needed - held))


def can_grant(granter: frozenset[str], role: str, custom: Mapping[str, RoleDefinition]) -> Decision:
    missing = _missing(granter, resolve_permissions(role, custom))
    if not missing:
        return ALLOW
    return Decision(allowed=False, reason="role holds permissions the granter does not", required_scopes=(missing,))


def check_definition(definition: RoleDefinition, custom: Mapping[str, RoleDefinition], creator: frozenset[str]) -> None:
    validate_role_name(definition.name)
    platform = sorted(str(p) for p in definition.permissions - tenant_permissions())
    if platform:
        raise RoleError(f"{_echo(platform[0])} cannot be granted inside an organization.", field="permissions")
    graph = {**custom, definition.name: definition}
    check_role_graph(graph)
    missing = _missing(creator, resolve_permissions(definition.name, graph))
    if missing:
        raise RoleError(
            f"You cannot create a role with permissions you do not hold: {', '.join(missing)}.", field="permissions"
        )


def role_rank(role: str) -> int:
    """Position of a built-in tenant role, viewer (0) to owner (4); -1 for any other role."""
    for rank, builtin in enumerate(ROLE_ORDER):
        if builtin.value == role:
            return rank
    return -1
