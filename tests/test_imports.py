"""The package's import graph, read from the source: no module imports one that imports it back (data flows one
way, engines receive what to run), imports between folders follow the table in ARCHITECTURE.md, and no module
takes another's private names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lfqtok"
FACE = {"cli", "progress", "__init__", "__main__"}  # may import any folder
SHARED = {"errors", "device", "__init__"}  # any module may import these (the root package: its __version__)


def module_name(path: Path) -> str:
    """'pipeline.encode' for lfqtok/pipeline/encode.py, 'errors' for lfqtok/errors.py, 'dataset' for a folder's
    __init__.py, '__init__' for the package's own."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
FOLDERS = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def folder(module: str) -> str:
    """The folder a module lives in ('' for the top level)."""
    head = module.split(".")[0]
    return head if head in FOLDERS else ""


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import of lfqtok modules in `name`, at any depth
    (function-level and TYPE_CHECKING imports count: they are dependencies all the same)."""
    path = MODULES[name]
    package = name.split(".")[:-1] if path.name != "__init__.py" else ([] if name == "__init__" else name.split("."))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("lfqtok"):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from .x import y`: y a module of its own, or a name of x
                sub = ".".join(base + [alias.name])
                if sub in MODULES:
                    found.append((sub, []))
                else:
                    found.append((".".join(base) or "__init__", [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(".".join(a.name.split(".")[1:]), []) for a in node.names if a.name.startswith("lfqtok.")]
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


def stated_layers() -> dict[str, set[str]]:
    """ARCHITECTURE.md's "may import" table: folder -> the folders and folder.modules it may import."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Which folder may import which", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if re.match(r"\|\s*`\w+`\s*\|", line)]
    return {re.findall(r"`([\w.]+)`", left)[0]: set(re.findall(r"`([\w.]+)`", right)) for left, right in rows}


def crossings(edges: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    """Every import the table does not allow, as 'a -> b'."""
    bad = []
    for name, targets in edges.items():
        home = folder(name)
        for target in targets:
            allowed = layers.get(home, set()) if home else set()
            if name in FACE:
                ok = True
            elif name in {"errors", "device"}:  # the shared leaves
                ok = target == "errors"
            else:
                ok = target in SHARED or (home and folder(target) == home) or any(target == a or target.startswith(a + ".") for a in allowed)
            if not ok:
                bad.append(f"{name} -> {target}")
    return sorted(bad)


def test_the_package_import_graph_has_no_cycle():
    edges = graph()
    encode, engines, worker = "pipeline.encode", "pipeline.engines", "pipeline.worker"
    assert edges[encode] >= {engines, worker} and encode not in edges[engines] | edges[worker]
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_folder_is_in_the_stated_table_and_every_import_follows_it():
    layers = stated_layers()
    assert set(layers) == FOLDERS, "ARCHITECTURE.md's table and the package's folders differ"
    assert layers["tokenizers"].isdisjoint({"pipeline", "inspect", "dataset", "training"})
    assert not {t for t in layers["inspect"] | layers["dataset"] if t.startswith("pipeline") and t not in {"pipeline.sources", "pipeline.tables", "pipeline.shapes", "pipeline.images", "pipeline.video"}}
    assert crossings(graph(), layers) == []


def test_the_layer_check_catches_imports_against_the_table():
    layers = {"io": set(), "tokenizers": {"io"}, "inspect": {"io", "pipeline.video"}, "pipeline": {"io", "tokenizers"}}
    edges = {
        "tokenizers.model": {"pipeline.sources", "io.codec", "errors", "device"},  # against the table: the pipeline
        "inspect.decode": {"pipeline.video", "pipeline.encode"},  # the encode run is not the decode stage
        "io.shards": {"__init__", "errors"},
        "errors": {"device"},  # the shared leaves import nothing else
        "cli": {"pipeline.encode"},
    }
    assert crossings(edges, layers) == ["errors -> device", "inspect.decode -> pipeline.encode", "tokenizers.model -> pipeline.sources"]


def test_no_module_imports_private_names_of_another():
    private = [(name, module, taken) for name in MODULES for module, names in imports(name) for taken in names if taken.startswith("_")]
    assert [p for p in private if p[2] != "__version__"] == []


@pytest.mark.parametrize("module", ["lfqtok.dataset"])
def test_documented_module_paths_still_import(module):
    """Names the docs give by module path (`lfqtok.dataset.collate`) live where the docs say."""
    import importlib

    mod = importlib.import_module(module)
    assert callable(mod.collate) and mod.TokenDataset.__name__ == "TokenDataset"
