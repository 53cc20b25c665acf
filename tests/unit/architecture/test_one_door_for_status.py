"""Workload statuses change only through gpupool.domain.status.transition: no code of the control plane
(server, store, client, CLI) assigns `.status` (the ORM's record_status_event is the one writer, called by
transition), and replica states change only through ReplicaRow.set_state."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src" / "gpupool"
CONTROL_PLANE = ("server", "store", "client", "cli")
ALLOWED = {("store/orm.py", "status"): "record_status_event", ("store/orm.py", "state"): "set_state"}


def _assignments(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(attribute, enclosing function, line) for every `x.status = ...` / `x.state = ...`."""
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            targets: list[ast.expr] = []
            if isinstance(child, ast.Assign):
                targets = list(child.targets)
            elif isinstance(child, ast.AugAssign | ast.AnnAssign):
                targets = [child.target]
            for target in targets:
                assigned = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                for t in assigned:
                    if isinstance(t, ast.Attribute) and t.attr in ("status", "state"):
                        found.append((t.attr, name, t.lineno))
            visit(child, name)

    visit(tree, "")
    return found


def test_only_the_doors_assign_statuses() -> None:
    offenders = []
    paths = sorted(p for package in CONTROL_PLANE for p in (SRC / package).rglob("*.py"))
    assert len(paths) > 20
    for path in paths:
        relative = str(path.relative_to(SRC))
        for attr, function, line in _assignments(ast.parse(path.read_text())):
            if ALLOWED.get((relative, attr)) != function:
                offenders.append(f"{relative}:{line} assigns .{attr} in {function or 'module'}")
    assert offenders == []


def test_the_checker_sees_an_assignment() -> None:
    assert _assignments(ast.parse("def f(row):\n    row.status = 'x'\n")) == [("status", "f", 2)]
