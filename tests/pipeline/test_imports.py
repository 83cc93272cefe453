"""The package's import structure, read from the source: sub-packages import only their own or lower layers,
no module imports another that (directly or not) imports it back, and nothing imports Prefect or flows/.

Imports inside functions count too: a lazy import that closes a cycle only hides it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
# lowest first: a module may import from its own sub-package or one listed before it
LAYERS = ("core", "data", "tracking", "models", "pretrain", "train", "compare")
# Being removed on another branch (pipeline/train restructuring); nothing may join this cycle meanwhile.
KNOWN_CYCLE = {"pipeline.train.text2text", "pipeline.train.rnn", "pipeline.train.encdec"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PIPELINE.rglob("*.py"):
        parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imported_names(tree: ast.AST) -> list[tuple[str, int]]:
    """(dotted name, line) of every import anywhere in the module; `from a import b` gives a.b and a."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
            names.append((node.module, node.lineno))
    return names


def _edges() -> dict[str, dict[str, int]]:
    """module -> {pipeline module it imports: line}."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        for target, line in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.count(".") >= 1 and target != name:  # a module of a sub-package, not `pipeline` itself
                edges.setdefault(name, {}).setdefault(target, line)
    return edges


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_every_module_is_in_a_layer():
    assert {_layer(m) for m in MODULES if m.count(".")} <= set(LAYERS)


def test_imports_respect_the_layer_order():
    wrong = [
        f"{MODULES[a].relative_to(PIPELINE.parent)}:{line} imports {b} ({_layer(a)} may not import {_layer(b)})"
        for a, targets in _edges().items() for b, line in targets.items()
        if _layer(a) in LAYERS and LAYERS.index(_layer(b)) > LAYERS.index(_layer(a))
    ]
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for module in edges:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_even_through_imports_inside_functions():
    edges = _edges()
    cycles = [c for c in _cycles(edges) if not c <= KNOWN_CYCLE]
    assert not cycles, "\n".join(
        " <-> ".join(sorted(c)) + ": " + ", ".join(f"{a} -> {b}" for a in sorted(c) for b in edges[a] if b in c)
        for c in cycles
    )


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    edges = {"pipeline.compare.a": {"pipeline.compare.b": 1}, "pipeline.compare.b": {"pipeline.compare.a": 9}}
    assert _cycles(edges) == [{"pipeline.compare.a", "pipeline.compare.b"}]


@pytest.mark.parametrize("forbidden", ["prefect", "flows"])
def test_pipeline_never_imports_the_orchestration(forbidden):
    found = [
        f"{path.relative_to(PIPELINE.parent)}:{line} imports {name}"
        for path in MODULES.values()
        for name, line in _imported_names(ast.parse(path.read_text(encoding="utf-8")))
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert not found, "\n".join(found)
