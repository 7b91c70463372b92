"""The layer rules, read from the source (a static scan of every import, lazy ones included).

model <- engine <- adapters <- widgets; cli and training are clients of their own; errors and
the package root are shared. No napari_sam module imports upward, and there is no import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_sam

SRC = Path(napari_sam.__file__).parent

#: layer -> the layers it may import (besides itself). "root" is napari_sam/__init__.py (__version__).
ALLOWED = {
    "errors": set(),
    "root": set(),
    "samples": set(),
    "model": {"errors"},
    "engine": {"errors", "model", "root"},
    "adapters": {"errors", "model", "engine"},
    "training": {"errors", "model", "engine"},
    "widgets": {"errors", "model", "engine", "adapters", "training", "samples"},
    "cli": {"errors", "model", "engine", "training", "samples", "root"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ["napari_sam", *path.relative_to(SRC).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """napari_sam module -> the napari_sam modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    mods = _modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [mod, *subs]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_known_layer():
    assert {layer(m) for m in import_graph()} <= set(ALLOWED)


def test_no_module_imports_upward():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if layer(b) != layer(a) and layer(b) not in ALLOWED[layer(a)])
    assert not upward, "imports against the layer rules:\n" + "\n".join(upward)


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_scan_sees_upward_imports_and_cycles():
    """The checks above can fail: a planted upward import and a planted cycle are found."""
    graph = import_graph()
    graph["napari_sam.model.sam"] = graph["napari_sam.model.sam"] | {"napari_sam.engine.progress"}
    assert any(layer(b) not in ALLOWED["model"] | {"model"} for b in graph["napari_sam.model.sam"])
    graph["napari_sam.engine.progress"] = graph["napari_sam.engine.progress"] | {"napari_sam.engine.batch.run"}
    assert any({"napari_sam.engine.batch.run", "napari_sam.engine.progress"} <= set(c) for c in cycles(graph))
    # and the scan reads lazy imports inside functions too
    assert "napari_sam.engine.batch.distributed" in import_graph()["napari_sam.engine.batch.run"]
