"""The package's layering, read from the source: no import cycle, models never reach into training, and only
the CLI and the recipes themselves import the recipes."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Imports allowed to close a cycle (none today); an entry goes when its import goes.
KNOWN_EDGES: set[tuple[str, str]] = set()


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement but those under `if TYPE_CHECKING:` (annotations only, never executed)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> nx.DiGraph:
    """dacdr module -> the dacdr modules it imports, at the top level or inside a function (a lazy import
    still ties the two modules together). `from pkg import name` points at `pkg.name` when that is a module."""
    files = {_module_name(p): p for p in (SRC / "dacdr").rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: `from . import x`, `from ..y import z`
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import dacdr.data.x.y` of a non-module: its nearest module
                    t = t.rpartition(".")[0]
                if t.startswith("dacdr") and t != mod:
                    graph.add_edge(mod, t)
        if path.name == "__init__.py" and "importlib.import_module" in path.read_text():
            # a package that imports all its modules by walking itself (dacdr.models: a model is one file)
            graph.add_edges_from((mod, m) for m in files if m.rpartition(".")[0] == mod)
    return graph


def test_the_graph_sees_known_edges():
    """The checker itself can fail: it finds imports that are there."""
    g = import_graph()
    assert g.has_edge("dacdr.recipes.train", "dacdr.training.trainer")
    assert g.has_edge("dacdr.cli.core", "dacdr.recipes.demo")  # a lazy import inside a command
    assert g.has_edge("dacdr.models", "dacdr.models.registry") and g.has_edge("dacdr.models", "dacdr.models.pop")
    assert not g.has_edge("dacdr.data.protocol", "dacdr.data.streaming")  # under `if TYPE_CHECKING:` only


def test_no_import_cycle():
    graph = import_graph()
    cycles = [c for c in nx.simple_cycles(graph)
              if not any(edge in KNOWN_EDGES for edge in zip(c, [*c[1:], c[0]], strict=True))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:10])


def test_models_import_nothing_from_training():
    bad = [(a, b) for a, b in import_graph().edges if a.startswith("dacdr.models") and b.startswith("dacdr.training")]
    assert not bad, f"models import training: {bad}"


def test_only_cli_and_recipes_import_recipes():
    bad = [(a, b) for a, b in import_graph().edges
           if b.startswith("dacdr.recipes") and not a.startswith(("dacdr.recipes", "dacdr.cli"))]
    assert not bad, f"the library imports a recipe: {bad}"
