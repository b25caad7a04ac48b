"""Tenant isolation, structurally: no query in resolvers/ or store/ reaches a tenant table unscoped.

A function that selects, updates, deletes or loads rows of a tenant table must scope them: through
`store.scoping` (`tenant_select`, `tenant_filter`, `subtree_ids`) or a comparison on
`organization_id`. The rare query that is scoped some other way (by the verified credential's own
user id, say) says so with a `# tenant-scope: <why>` comment inside the function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sqlmodel import SQLModel

import store.models as models
from store.models import TENANT_TABLES

ROOT = Path(__file__).resolve().parents[2]
CHECKED = [*sorted((ROOT / "resolvers").glob("*.py")), *sorted((ROOT / "store").glob("*.py"))]
QUERY_CALLS = {"select", "sa_select", "sm_select", "update", "delete", "get", "join", "tenant_select"}
SCOPED_BY = ("organization_id", "tenant_select", "tenant_filter", "subtree_ids", "# tenant-scope:")


def tenant_models() -> set[str]:
    names = set()
    for name in dir(models):
        obj = getattr(models, name)
        if isinstance(obj, type) and issubclass(obj, SQLModel) and getattr(obj, "__tablename__", None) in TENANT_TABLES:
            names.add(name)
    return names


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def unscoped_queries(path: Path, tenant: set[str]) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        touched = sorted(
            {
                arg.id
                for call in ast.walk(fn)
                if isinstance(call, ast.Call) and _call_name(call) in QUERY_CALLS
                for arg in call.args
                if isinstance(arg, ast.Name) and arg.id in tenant
            }
        )
        if not touched:
            continue
        body = "\n".join(lines[fn.lineno - 1 : fn.end_lineno])
        if not any(marker in body for marker in SCOPED_BY):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            found.append(f"{where}:{fn.lineno} {fn.name} touches {', '.join(touched)}")
    return found


def test_every_tenant_table_has_organization_id() -> None:
    for table in SQLModel.metadata.sorted_tables:
        if table.name in TENANT_TABLES:
            assert "organization_id" in table.c, table.name


def test_no_unscoped_tenant_query() -> None:
    tenant = tenant_models()
    assert {"Membership", "AuthSession", "RefreshToken"} <= tenant
    problems = [p for path in CHECKED for p in unscoped_queries(path, tenant)]
    assert problems == [], "scope these through store.scoping or explain with '# tenant-scope:'"


def test_the_check_catches_an_unscoped_query(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "async def leak(db, membership_id):\n"
        "    return await db.get(Membership, membership_id)\n"
        "async def fine(db, org, membership_id):\n"
        "    return (await db.execute(select(Membership).where(Membership.organization_id == org))).first()\n"
    )
    tenant = tenant_models()
    problems = [p.split(" ", 1)[1] for p in unscoped_queries(bad, tenant)]
    assert problems == ["leak touches Membership"]
