"""Rules of the code itself, read from the source with `ast`: no import circle, the floors, small modules, no
reaching into another package's private attributes, none of the library internals the code once relied on.

"The project's code" is the packages below (migrations excluded); tests are not held to these rules.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("authz", "identity", "store", "schema", "resolvers", "gateway", "bench")
MAX_MODULE_LINES = 500

# What each floor may import of the project (docs/development.md, "Layout"): only the floors below it.
# bench/ is no floor: it composes its builds from every package, and no package imports it.
FLOORS: dict[str, frozenset[str]] = {
    "authz": frozenset(),
    "store": frozenset({"authz"}),
    "identity": frozenset({"authz", "store"}),
    "resolvers": frozenset({"authz", "store", "identity"}),
    "schema": frozenset({"authz", "store", "identity", "resolvers"}),
    "gateway": frozenset({"authz", "store", "identity", "resolvers", "schema"}),
}

# Private attributes of objects the project does not define, read on purpose. Each with its reason.
ALLOWED_PRIVATE: dict[str, str] = {
    "_raw_info": "strawberry's `Info` exposes the field nodes of the resolved field only through `_raw_info`; "
    "the guard keys its per-operation decisions by the field node (schema/directives.py)",
    "_schema": "strawberry's `Schema` keeps the graphql-core schema it builds as `_schema` and offers no public "
    "accessor; the authorizer and the cost model read the directives and types from it once, when the "
    "schema is built (schema/__init__.py)",
}

# Library internals the code once reached into: none may come back (as a whole identifier; `audit_writer` is fine).
FORBIDDEN_NAMES = ("_writer", "_execute", "_conn", "_sha2", "do_commit", "early_admission")


# Runtime dependencies the project's code never imports, each with the reason it is declared.
NOT_IMPORTED_DEPENDENCIES: dict[str, str] = {
    "aiosqlite": "the SQLite driver SQLAlchemy loads for `sqlite+aiosqlite` URLs",
    "psycopg": "the PostgreSQL driver SQLAlchemy loads for `postgresql+psycopg` URLs",
    "itsdangerous": "Starlette's SessionMiddleware signs the SSO transaction cookie with it",
    "xmlsec": "python3-saml signs and verifies with it; pinned to link the same libxml2 as lxml",
    "lxml": "python3-saml parses with it; pinned to link the same libxml2 as xmlsec",
    "tzdata": "zoneinfo reads the IANA time zones of report schedules from it where the system has none",
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name.split(".")[0]

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules() -> dict[str, Module]:
    modules = {}
    for path in project_files():
        name = module_name(path)
        modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not inside a function, not under `if TYPE_CHECKING:`."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend([*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)])
        elif isinstance(node, ast.With | ast.ClassDef):
            stack.extend(node.body)


def all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def imported_modules(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The project's modules an import statement loads: the most specific known module of each name."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.name.split(".")
            anchor = anchor if module.is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    out = set()
    for target in targets:
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            out.add(".".join(parts))
    return out


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    known = set(modules)
    return {
        name: {t for node in module_level_imports(m.tree) for t in imported_modules(m, node, known)} - {name}
        for name, m in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_circle_in(graph, c) for c in components]


def _circle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle from the component's first module back to itself, within the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no circle in {component}")  # a strongly connected component always has one


# -- private attributes -------------------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(trees: list[ast.Module]) -> set[str]:
    """Every name the project defines: functions, classes and assignment targets (`_x = ...`, `self._x = ...`).
    An assignment to another object's attribute (`schema._x = ...`) defines nothing: it writes into that object."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
    return names


def private_accesses(tree: ast.Module, own: set[str], allowed: dict[str, str]) -> list[tuple[int, str]]:
    """`x._name` where `x` is not `self`/`cls` and `_name` is neither the project's nor allowed: (line, source)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr in own or node.attr in allowed:
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


# -- the tests ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules()


def test_no_import_circle(modules: dict[str, Module]) -> None:
    """No circle among the project's modules, counting what a module imports when it is itself imported:
    imports inside functions and under `if TYPE_CHECKING:` are left out (they run later, or never), and so is
    the implicit import of a module's parent package."""
    found = cycles(import_graph(modules))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"b.z"}, "b.z": {"a.x"}, "b.w": {"a.x"}, "c": set()}
    assert cycles(graph) == [["a.x", "a.y", "b.z", "a.x"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_and_function_imports_are_not_module_level() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import store.db\n"
        "if TYPE_CHECKING:\n    import schema.enums\n"
        "def f():\n    import gateway.app\n"
        "try:\n    import identity.tokens\nexcept ImportError:\n    pass\n"
    )
    names = {alias.name for node in module_level_imports(tree) for alias in node.names}
    assert names == {"TYPE_CHECKING", "store.db", "identity.tokens"}


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_floors(modules: dict[str, Module], package: str) -> None:
    """A package imports only from the floors below it (docs/development.md), wherever the import is written:
    inside a function or under `if TYPE_CHECKING:` too."""
    known = set(modules)
    allowed = FLOORS[package] | {package}
    wrong = sorted(
        f"{m.path.relative_to(ROOT)}:{node.lineno} imports {target}"
        for m in modules.values()
        if m.package == package
        for node in all_imports(m.tree)
        for target in imported_modules(m, node, known)
        if target.split(".")[0] not in allowed
    )
    assert not wrong, "\n".join(wrong)


def test_no_package_imports_bench(modules: dict[str, Module]) -> None:
    known = set(modules)
    wrong = sorted(
        f"{m.path.relative_to(ROOT)}:{node.lineno}"
        for m in modules.values()
        if m.package != "bench"
        for node in all_imports(m.tree)
        if any(t.split(".")[0] == "bench" for t in imported_modules(m, node, known))
    )
    assert not wrong, wrong


def test_no_module_over_500_lines() -> None:
    long = sorted(
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in project_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert not long, "\n".join(long)


def test_no_private_attribute_of_another_package(modules: dict[str, Module]) -> None:
    """`x._name` only on `self`/`cls`, or for a `_name` the project defines itself, or one allowed above."""
    own = defined_names([m.tree for m in modules.values()])
    found = sorted(
        f"{m.path.relative_to(ROOT)}:{line}: {text}"
        for m in modules.values()
        for line, text in private_accesses(m.tree, own, ALLOWED_PRIVATE)
    )
    assert not found, "private attributes of objects the project does not define:\n" + "\n".join(found)


def test_the_private_attribute_check_finds_a_planted_access(modules: dict[str, Module]) -> None:
    own = defined_names([m.tree for m in modules.values()])
    planted = ast.parse("async def send(redis_connection):\n    redis_connection._writer.write(b'')\n")
    assert private_accesses(planted, own, ALLOWED_PRIVATE) == [(2, "redis_connection._writer")]
    # writing into another object's private attribute is an access too, and defines no name of the project's
    written = ast.parse("def trim(schema):\n    schema._validation_errors = []\n")
    assert private_accesses(written, own | defined_names([written]), ALLOWED_PRIVATE) == [
        (2, "schema._validation_errors")
    ]
    allowed = ast.parse(
        "class Cache:\n"
        "    def __init__(self):\n"
        "        self._x = {}\n"
        "    def get(self, other):\n"
        "        return self._x, cls._y, other._x, other.__dict__\n"
        "def _helper(): ...\n"
        "def use(module):\n"
        "    return module._helper()\n"
    )
    assert private_accesses(allowed, own | defined_names([allowed]), ALLOWED_PRIVATE) == []


def test_no_library_internals_by_name() -> None:
    """None of the library internals the code once relied on is spelled anywhere in the project's code."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in FORBIDDEN_NAMES) + r")\b")
    found = sorted(
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in project_files()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    )
    assert not found, "\n".join(found)


def test_every_dependency_is_used() -> None:
    """pyproject declares only what the project's code imports, or what it needs without importing it."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    provides: dict[str, set[str]] = {}
    for top, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            provides.setdefault(distribution.lower().replace("_", "-"), set()).add(top.split("/")[0])
    imported = {
        alias.name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
        for m in load_modules().values()
        for node in all_imports(m.tree)
        for alias in node.names
        if not (isinstance(node, ast.ImportFrom) and node.level)
    }
    unused = sorted(
        name
        for name in (re.split(r"[\[<>=~!; ]", d, maxsplit=1)[0].lower() for d in declared)
        if name not in NOT_IMPORTED_DEPENDENCIES and not provides.get(name, set()) & imported
    )
    assert not unused, f"declared and never imported: {unused}"
