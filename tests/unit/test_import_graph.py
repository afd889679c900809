"""The layout's rules, read off the source: the module-level import graph (imports under
``TYPE_CHECKING`` included, imports deferred into a function not) has no cycle, and the
packages depend on each other only downwards:

    cli, console, bench  ->  coordinator, services  ->  contract  ->  common

The coordinator and the services never import each other: what they agree on is in
contract/. (Each process's ``__main__`` may reach cli.serve, the one definition of
every process's start options.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "contract", "coordinator", "services", "cli", "console", "bench")
# Which packages each package may import (besides itself, protos and third parties).
ALLOWED = {
    "common": {"contract"},  # the participant edge packs saga data and names modes
    "contract": {"common"},
    "coordinator": {"common", "contract"},
    "services": {"common", "contract"},
    "bench": {"common", "contract", "coordinator", "services", "cli"},
    "cli": {"common", "contract", "coordinator", "services", "bench", "console"},
    "console": {"common", "contract", "cli"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _module_level_imports(path: Path) -> set[str]:
    """What the module imports when it is loaded (TYPE_CHECKING blocks included)."""
    imported: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    # ``from pkg import module`` imports the module, not a cycle via pkg.
                    imported.add(submodule if submodule in MODULES else node.module)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return imported


GRAPH = {
    name: {m for m in _module_level_imports(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_finder_sees_a_cycle_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downwards(package: str) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package and not module.endswith("__main__")
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert wrong == []
