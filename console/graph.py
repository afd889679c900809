"""A saga definition drawn as a graph: where each step goes, and the paths between them.

Steps are laid out left to right in layers: a step's column is the length of the
longest chain of steps it runs after, so every edge points right and steps that
run in parallel (the same column) stand one above the other, side by side in time.
Within a column, steps are ordered by where the steps they follow stand (the
barycentre of their predecessors' rows), then by their order in the definition,
which keeps edges from crossing in the usual fork-and-join shapes.

The compensations a saga ran are drawn as the reverse path, in the order they ran:
:func:`compensation_waves` groups them into waves (compensations that overlapped in
time ran in parallel, one wave), and :func:`reverse_path` links the step that failed
to the first wave, each wave to the next. Everything here is pure and returns
plain values the front end draws as SVG as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

NODE_WIDTH = 214
NODE_HEIGHT = 68
GAP_X = 70
GAP_Y = 34
PAD = 24
# Room under the nodes for the compensation path's curves.
PAD_BOTTOM = 70


@dataclass(frozen=True)
class GraphStep:
    """What the layout needs of a step: its name and the steps it runs after."""

    name: str
    after: tuple[str, ...]


@dataclass(frozen=True)
class Node:
    name: str
    column: int
    row: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    # An SVG path, from the source's right side to the target's left side.
    path: str


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def columns(steps: Sequence[GraphStep]) -> dict[str, int]:
    """Each step's column: 0 for a step that runs after none, else one more than the
    furthest of the steps it runs after. Unknown names in ``after`` are ignored; the
    definitions the coordinator serves have no cycles, and a cycle here is cut."""
    known = {s.name: s for s in steps}
    found: dict[str, int] = {}

    def column(name: str, visiting: frozenset[str]) -> int:
        if name in found:
            return found[name]
        deps = [d for d in known[name].after if d in known and d not in visiting]
        value = 1 + max((column(d, visiting | {name}) for d in deps), default=-1)
        found[name] = value
        return value

    for step in steps:
        column(step.name, frozenset())
    return found


def layout(steps: Sequence[GraphStep]) -> Layout:
    """Where each step goes (see the module docstring) and the edges between them."""
    if not steps:
        return Layout(PAD * 2, PAD * 2, (), ())
    position = {s.name: i for i, s in enumerate(steps)}
    column_of = columns(steps)
    by_column: dict[int, list[GraphStep]] = {}
    for step in steps:
        by_column.setdefault(column_of[step.name], []).append(step)
    rows: dict[str, float] = {}
    for column in sorted(by_column):
        members = by_column[column]

        def barycentre(step: GraphStep) -> float:
            placed = [rows[d] for d in step.after if d in rows]
            return sum(placed) / len(placed) if placed else float(position[step.name])

        members.sort(key=lambda s: (barycentre(s), position[s.name]))
        for row, step in enumerate(members):
            rows[step.name] = float(row)
    tallest = max(len(m) for m in by_column.values())
    body = tallest * NODE_HEIGHT + (tallest - 1) * GAP_Y
    height = PAD + body + PAD_BOTTOM
    nodes = []
    for column, members in sorted(by_column.items()):
        span = len(members) * NODE_HEIGHT + (len(members) - 1) * GAP_Y
        top = PAD + (body - span) / 2
        for row, step in enumerate(members):
            nodes.append(
                Node(
                    name=step.name,
                    column=column,
                    row=row,
                    x=PAD + column * (NODE_WIDTH + GAP_X),
                    y=top + row * (NODE_HEIGHT + GAP_Y),
                    width=NODE_WIDTH,
                    height=NODE_HEIGHT,
                )
            )
    placed = {n.name: n for n in nodes}
    edges = tuple(
        Edge(dep, step.name, _forward_path(placed[dep], placed[step.name]))
        for step in steps
        for dep in step.after
        if dep in placed
    )
    width = PAD * 2 + (max(column_of.values()) + 1) * (NODE_WIDTH + GAP_X) - GAP_X
    nodes.sort(key=lambda n: position[n.name])
    return Layout(width=width, height=height, nodes=tuple(nodes), edges=edges)


def _forward_path(source: Node, target: Node) -> str:
    x1, y1 = source.x + source.width, source.y + source.height / 2
    x2, y2 = target.x, target.y + target.height / 2
    bend = max((x2 - x1) / 2, 20)
    return f"M {x1:g} {y1:g} C {x1 + bend:g} {y1:g}, {x2 - bend:g} {y2:g}, {x2:g} {y2:g}"


@dataclass(frozen=True)
class Compensation:
    """One step's compensation as it ran: its first attempt's start, its last one's end."""

    step: str
    started_at: datetime
    finished_at: datetime | None
    wave: int = 0


def compensation_waves(ran: Sequence[Compensation]) -> list[Compensation]:
    """The compensations in the order they started, each with its wave (1, 2, ...):
    one that started before every compensation of the current wave had finished ran
    beside them, in the same wave; one that started after, in the next."""
    ordered = sorted(ran, key=lambda c: (c.started_at, c.step))
    waves: list[Compensation] = []
    wave = 0
    # The current wave's latest finish, and whether one of it is still running.
    wave_end: datetime | None = None
    still_running = False
    for item in ordered:
        if wave == 0 or (
            not still_running and wave_end is not None and item.started_at >= wave_end
        ):
            wave, wave_end, still_running = wave + 1, item.finished_at, item.finished_at is None
        elif item.finished_at is None:
            still_running = True
        elif wave_end is None or item.finished_at > wave_end:
            wave_end = item.finished_at
        waves.append(replace(item, wave=wave))
    return waves


@dataclass(frozen=True)
class ReverseEdge:
    source: str
    target: str
    # The wave the target's compensation ran in.
    wave: int
    path: str


def reverse_path(
    graph: Layout, failed_step: str, waves: Sequence[Compensation]
) -> tuple[ReverseEdge, ...]:
    """The compensation path: from the step that failed (when it is in the graph) to
    every compensation of the first wave, then from each wave to the next."""
    by_wave: dict[int, list[str]] = {}
    for item in waves:
        by_wave.setdefault(item.wave, []).append(item.step)
    names = {n.name for n in graph.nodes}
    previous = [failed_step] if failed_step in names else []
    edges: list[ReverseEdge] = []
    for wave in sorted(by_wave):
        current = [s for s in by_wave[wave] if s in names]
        for source in previous:
            for target in current:
                if source != target:
                    path = _reverse_path(graph.node(source), graph.node(target))
                    edges.append(ReverseEdge(source, target, wave, path))
        previous = current or previous
    return tuple(edges)


def _reverse_path(source: Node, target: Node) -> str:
    """A curve from ``source`` back to ``target``, under the forward edges: from the
    source's bottom edge to the target's; beside the column when both share it."""
    if source.column == target.column:
        x = source.x + source.width
        y1 = source.y + source.height * 0.5
        y2 = target.y + target.height * 0.5
        return f"M {x:g} {y1:g} C {x + 46:g} {y1:g}, {x + 46:g} {y2:g}, {x:g} {y2:g}"
    x1, y1 = source.x + source.width * 0.35, source.y + source.height
    x2, y2 = target.x + target.width * 0.65, target.y + target.height
    dip = 34 + abs(source.row - target.row) * 4
    low = max(y1, y2) + dip
    return f"M {x1:g} {y1:g} C {x1:g} {low:g}, {x2:g} {low:g}, {x2:g} {y2:g}"


def as_plain(graph: Layout) -> Mapping[str, object]:
    """The layout as JSON-ready values."""
    return {
        "width": graph.width,
        "height": graph.height,
        "nodes": [
            {
                "name": n.name,
                "column": n.column,
                "row": n.row,
                "x": n.x,
                "y": n.y,
                "width": n.width,
                "height": n.height,
            }
            for n in graph.nodes
        ],
        "edges": [{"source": e.source, "target": e.target, "path": e.path} for e in graph.edges],
    }
