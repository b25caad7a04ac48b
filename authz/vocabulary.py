"""The whole permission vocabulary: the built-in permissions plus the team's own, installed once per process.

A deployment declares its own permissions (`[[permission]]` in the upstreams file, contract.md "Upstreams");
the gateway reads them once, when the app is created, and installs them here. From then on a team permission
is a permission like the built-in ones: a name in custom roles, API-key scopes and directives, held by the
built-in roles that its declaration lists (exactly those). It is always grantable inside a tenant and never
a `platform:` permission, so the platform role never holds one.

Built-in permissions are `Permission` members, team permissions plain `str`: a StrEnum member compares and
hashes equal to its value, so sets of either mix freely; write a name with `str(p)`, never `p.value`.

The installed set is replaced as a whole. Everything derived from it (every name, the grantable names, each
built-in role's grants) is computed once per installed set, into one immutable snapshot that lookups read,
so the hot path stays a frozenset or dict lookup and a reader never sees half of an installation. Nothing
is installed by default, and a name no longer installed grants nothing (deny by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authz.permissions import ALL_PERMISSION_NAMES, TENANT_PERMISSIONS
from authz.roles import BUILTIN_ROLE_PERMISSIONS, PLATFORM_ROLE, BuiltinRole

RESERVED_PREFIX = "platform:"
_NAME = re.compile(r"[a-z][a-z0-9-]*(?::[a-z][a-z0-9-]*)+")
_ROLE_NAMES = frozenset(r.value for r in BuiltinRole)
_ROLE_LIST = ", ".join(r.value for r in BuiltinRole)
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TeamPermission:
    """One of the team's own permissions; `roles` are the built-in roles that hold it, exactly those."""

    name: str
    description: str = ""
    roles: tuple[str, ...] = ()


class TeamPermissionError(ValueError):
    """Refused team permissions; `problems` lists every one, each naming its permission."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid team permissions: " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    team: Mapping[str, TeamPermission]
    names: frozenset[str]
    tenant: frozenset[str]
    grants: Mapping[str, frozenset[str]]


def _vocabulary(team: Mapping[str, TeamPermission]) -> _Vocabulary:
    own = frozenset(team)
    grants = {
        role: held | frozenset(p.name for p in team.values() if role in p.roles)
        for role, held in BUILTIN_ROLE_PERMISSIONS.items()
    }
    return _Vocabulary(
        team=MappingProxyType(dict(team)),
        names=ALL_PERMISSION_NAMES | own,
        tenant=frozenset(TENANT_PERMISSIONS) | own,
        grants=MappingProxyType(grants),
    )


_current = _vocabulary({})


def _problems(permission: TeamPermission, seen: set[str]) -> list[str]:
    name = permission.name
    if not isinstance(name, str):
        return [f"permission name {name!r} is not a string"]
    label = f"permission {name!r}"
    problems = []
    if name.startswith(RESERVED_PREFIX):
        problems.append(f"{label}: the {RESERVED_PREFIX!r} prefix is reserved for the platform operator")
    elif not _NAME.fullmatch(name):
        problems.append(f"{label}: a name is <domain>:<verb>, each part a lowercase letter then letters, digits, '-'")
    elif name in ALL_PERMISSION_NAMES:
        problems.append(f"{label} is a built-in permission")
    if name in seen:
        problems.append(f"{label} is declared more than once")
    seen.add(name)
    if not isinstance(permission.description, str):
        problems.append(f"{label}: description is not a string")
    if not isinstance(permission.roles, tuple | list) or not all(isinstance(r, str) for r in permission.roles):
        problems.append(f"{label}: roles is a list of built-in role names")
        return problems
    for role in permission.roles:
        if role == PLATFORM_ROLE:
            problems.append(f"{label}: the platform role cannot hold a team permission")
        elif role not in _ROLE_NAMES:
            problems.append(f"{label}: unknown role {role!r} (the built-in roles are {_ROLE_LIST})")
    return problems


def install_team_permissions(permissions: Iterable[TeamPermission]) -> None:
    """Replace the installed team permissions with `permissions`, all or nothing.

    Raises `TeamPermissionError` (a `ValueError`) listing every problem at once; the installed set is then
    left as it was."""
    given = list(permissions)
    seen: set[str] = set()
    problems = [problem for permission in given for problem in _problems(permission, seen)]
    if problems:
        raise TeamPermissionError(problems)
    global _current
    _current = _vocabulary(
        {
            p.name: TeamPermission(name=p.name, description=p.description, roles=tuple(dict.fromkeys(p.roles)))
            for p in given
        }
    )


def team_permissions() -> Mapping[str, TeamPermission]:
    """The installed team permissions by name (read-only; empty unless installed)."""
    return _current.team


def permission_names() -> frozenset[str]:
    """Every permission: the built-in ones and the installed team permissions."""
    return _current.names


def is_permission(name: str) -> bool:
    return name in _current.names


def tenant_permissions() -> frozenset[str]:
    """What may be granted inside an organization: every permission but the `platform:` ones."""
    return _current.tenant


def is_tenant_permission(name: str) -> bool:
    return name in _current.tenant


def permissions_for_role(name: str) -> frozenset[str]:
    """The permissions of a built-in role, with the team permissions that list it; an unknown name grants
    nothing (deny by default)."""
    return _current.grants.get(name, _EMPTY)
