"""Small graph helpers for saga definitions: steps and their ``after:`` dependencies.

A graph maps each step to the steps it runs after. Orders are stable: ties keep
the order in which steps were declared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep in graph and dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def topological(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Every node after all of its dependencies (the graph must have no cycle)."""
    done: list[str] = []
    seen: set[str] = set()
    remaining = list(graph)
    while remaining:
        ready = [n for n in remaining if all(d in seen for d in graph[n])]
        if not ready:
            raise ValueError("the graph has a cycle")
        for node in ready:
            done.append(node)
            seen.add(node)
        remaining = [n for n in remaining if n not in seen]
    return done


def ancestors(graph: Mapping[str, Sequence[str]], node: str) -> frozenset[str]:
    """Every node that ``node`` depends on, directly or not."""
    found: set[str] = set()
    stack = list(graph[node])
    while stack:
        dep = stack.pop()
        if dep not in found:
            found.add(dep)
            stack.extend(graph.get(dep, ()))
    return frozenset(found)
