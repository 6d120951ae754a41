"""The package's import graph, read from the source: no module imports one that imports it back (data flows one
way, engines receive what to run), and no module takes another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lfqtok"
MODULES = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import of lfqtok modules in `name`, at any depth
    (function-level and TYPE_CHECKING imports count: they are dependencies all the same)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 0 and not base.startswith("lfqtok"):
                continue
            base = base.removeprefix("lfqtok").lstrip(".")
            if base:
                found.append((base.split(".")[0], [a.name for a in node.names]))
            else:  # `from . import x`: a module, or a name of the package itself
                found += [(a.name, []) if a.name in MODULES else ("__init__", [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("lfqtok.")]
    return found


def graph() -> dict[str, set[str]]:
    return {name: {module for module, _ in imports(name) if module in MODULES and module != name} for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_import_graph_has_no_cycle():
    edges = graph()
    assert edges["encode"] >= {"engines", "worker"} and "encode" not in edges["engines"] | edges["worker"]
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_private_names_of_another():
    private = [(name, module, taken) for name in MODULES for module, names in imports(name) for taken in names if taken.startswith("_")]
    assert [p for p in private if p[2] != "__version__"] == []
