"""A pipeline run's steps as a graph drawn on the server: `layout` (pure) places each step in a column by its
depth (the longest chain of needs before it) and orders each column to keep edges short; `dag_svg` draws the
boxes, coloured by state, each linking to its step's workload, and the edges of the needs as arrows.

Every name and state is escaped before it goes into the SVG; coordinates are numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Pixels. A box holds a step name of up to ~22 characters at 12 px and its state below; the gaps leave room
# for the arrows between columns and keep rows apart at phone width, where the drawing is scaled down.
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 170, 44, 56, 18, 8
NAME_CHARS = 22  # characters of a step name shown in its box (the whole name is its tooltip)


@dataclass(frozen=True, slots=True)
class Box:
    """A step's place: its column (depth), its row within the column, and its top-left corner in pixels."""

    name: str
    column: int
    row: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Layout:
    """The placed steps (in the given order), the edges (need, step) and the drawing's size in pixels."""

    boxes: tuple[Box, ...]
    edges: tuple[tuple[str, str], ...]
    width: int
    height: int

    def box(self, name: str) -> Box:
        """The box of step `name`."""
        return next(b for b in self.boxes if b.name == name)


def depths(needs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each step's column: 0 for a step that needs nothing, else one more than the deepest step it needs.
    ValueError when a step needs an unknown step or the needs form a cycle."""
    out: dict[str, int] = {}
    for start in needs:
        stack: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while stack:
            name, expanded = stack.pop()
            if name in out:
                continue
            if name not in needs:
                raise ValueError(f"a step needs {name!r}, which is not a step")
            if expanded:
                on_path.discard(name)
                out[name] = 1 + max((out[n] for n in needs[name]), default=-1)
                continue
            if name in on_path:
                raise ValueError(f"the needs of step {name!r} form a cycle")
            on_path.add(name)
            stack.append((name, True))
            stack.extend((n, False) for n in needs[name] if n not in out)
    return out


def layout(needs: Mapping[str, Sequence[str]]) -> Layout:
    """Place the steps (`needs`: each step, in the spec's order, and the steps it needs): columns by depth,
    left to right; in each column steps sorted by the mean row of what they need (fewer crossings), ties
    in the spec's order."""
    column_of = depths(needs)
    order = {name: i for i, name in enumerate(needs)}
    row_of: dict[str, int] = {}
    columns = max(column_of.values(), default=-1) + 1
    for column in range(columns):
        members = [n for n in needs if column_of[n] == column]

        def pull(name: str) -> tuple[float, int]:
            rows = [row_of[n] for n in needs[name]]
            return (sum(rows) / len(rows) if rows else 0.0, order[name])

        for row, name in enumerate(sorted(members, key=pull)):
            row_of[name] = row
    boxes = tuple(
        Box(n, column_of[n], row_of[n], MARGIN + column_of[n] * (BOX_W + GAP_X), MARGIN + row_of[n] * (BOX_H + GAP_Y))
        for n in needs
    )
    rows = max((b.row for b in boxes), default=-1) + 1
    width = 2 * MARGIN + columns * BOX_W + max(columns - 1, 0) * GAP_X
    height = 2 * MARGIN + rows * BOX_H + max(rows - 1, 0) * GAP_Y
    edges = tuple((need, name) for name in needs for need in needs[name])
    return Layout(boxes, edges, width, height)


def _edge(start: Box, end: Box) -> str:
    x1, y1 = start.x + BOX_W, start.y + BOX_H / 2
    x2, y2 = end.x - 4, end.y + BOX_H / 2  # stop short of the box so the arrowhead shows
    bend = (x2 - x1) / 2
    return (
        f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} '
        f'{x2:.0f},{y2:.0f}" marker-end="url(#arrow)"/>'
    )


def _label(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def dag_svg(graph: Layout, states: Mapping[str, str], links: Mapping[str, str], title: str) -> Markup:
    """The graph as an SVG image: each step a box of class `step-<state>` with its name and state (a link
    when `links` has its target), each need an arrow from the needed step to the step."""
    parts = [
        f'<svg class="dag" viewBox="0 0 {graph.width} {graph.height}" width="{graph.width}" '
        f'role="img" aria-labelledby="dag-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="dag-title">{escape(title)}</title>',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="8" markerHeight="8" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>',
    ]
    parts.extend(_edge(graph.box(need), graph.box(step)) for need, step in graph.edges)
    for b in graph.boxes:
        state = states.get(b.name, "waiting")
        body = (
            f'<g class="step step-{escape(state)}"><title>{escape(b.name)}: {escape(state)}</title>'
            f'<rect x="{b.x}" y="{b.y}" width="{BOX_W}" height="{BOX_H}" rx="5"/>'
            f'<text x="{b.x + 8}" y="{b.y + 18}" class="name">{escape(_label(b.name))}</text>'
            f'<text x="{b.x + 8}" y="{b.y + 35}" class="what">{escape(state)}</text></g>'
        )
        target = links.get(b.name)
        parts.append(f'<a href="{escape(target)}">{body}</a>' if target else body)
    parts.append("</svg>")
    return Markup("".join(parts))
