"""The migration package's layers go one way: no import cycle inside ``qemu/migration``
(TYPE_CHECKING and function-level imports included), and nothing below the engine imports
it (issue 12)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pyvirt" / "qemu" / "migration"
PREFIX = "pyvirt.qemu.migration"


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PREFIX:
                found |= {alias.name for alias in node.names}
            elif node.module.startswith(PREFIX + "."):
                found.add(node.module.split(".")[3])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[3] for a in node.names if a.name.startswith(PREFIX + ".")}
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {m: imports_of(PACKAGE / f"{m}.py") & modules for m in modules}


def test_no_import_cycle_in_the_migration_package() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(edges[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


def test_only_the_engine_is_the_top() -> None:
    importers = {m for m, imported in graph().items() if "engine" in imported}
    assert importers == set()
