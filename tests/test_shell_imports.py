"""No module imports an ASGI shell inside a function: the shells sit on top, out of any cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "hubbub"
SHELLS = {"app", "api", "_admin", "_demo", "middleware", "cli", "metrics"}
LEAVES = {"_http", "_closes", "_api_wire"}


def _imports(tree: ast.AST, package: str) -> list[tuple[str, bool]]:
    """Every ``hubbub`` module imported, with whether the import sits inside a function."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                found.append((module, nested))
                found.extend((f"{module}.{alias.name}", nested) for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, nested) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        package = ".".join(parts[:-1])
        modules.append((package, path))
    return modules


@pytest.mark.parametrize(("package", "path"), _modules(), ids=lambda v: str(v))
def test_no_function_imports_a_shell(package: str, path: Path) -> None:
    """No function in the package imports ``app``, ``api``, ``_admin``, ``_demo``, … lazily."""
    shells = {f"hubbub.{name}" for name in SHELLS}
    late = [m for m, nested in _imports(ast.parse(path.read_text()), package) if nested]
    assert [m for m in late if m in shells] == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_no_layer_above(leaf: str) -> None:
    """``_http``, ``_closes`` and ``_api_wire`` import nothing of hubbub but other leaves."""
    allowed = {"hubbub._errors", "hubbub.messages", *(f"hubbub.{name}" for name in LEAVES)}
    imported = {m for m, _ in _imports(ast.parse((SRC / f"{leaf}.py").read_text()), "hubbub")}
    ours = {m for m in imported if m.startswith("hubbub")}
    assert {m for m in ours if m not in allowed and m.rsplit(".", 1)[0] not in allowed} == set()
