"""The layer diagram of docs/architecture.md holds: no upward import, no import cycle.

    errors ← protocol ← core ← node ← {backplane, upstream} ← server ← cli
                     ↖ sdk (protocol + errors only)

Every ``import`` in ``src/webpubsub`` counts, also those inside functions and under
``TYPE_CHECKING``: a cycle hidden from the interpreter is still a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "webpubsub"

BELOW: dict[str, set[str]] = {
    "errors": set(),
    "protocol": {"errors"},
    "core": {"errors", "protocol"},
    "node": {"errors", "protocol", "core"},
    "backplane": {"errors", "protocol", "core", "node"},
    "upstream": {"errors", "protocol", "core", "node"},
    "config": {"errors", "protocol", "core"},
    "server": {"errors", "protocol", "core", "node", "backplane", "upstream", "config"},
    "devcert": set(),
    "sdk": {"errors", "protocol"},
    "chat": {"sdk"},
}
"""What each layer may import besides itself (``cli`` may import anything)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> set[str]:
    """The ``webpubsub`` modules ``path`` imports (a package import counts as the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("webpubsub"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "webpubsub":
                found.update(f"webpubsub.{a.name}" for a in node.names)
            elif node.module.startswith("webpubsub."):
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {i for i in imports_of(p) if i in modules} for name, p in modules.items()}


def test_no_layer_imports_upward_or_sideways() -> None:
    wrong = []
    for module, targets in sorted(graph().items()):
        layer = layer_of(module)
        if layer in ("cli", "__main__", ""):
            continue
        assert layer in BELOW, f"{module}: a layer the diagram does not know"
        for target in sorted(targets):
            other = layer_of(target)
            if other != layer and other not in BELOW[layer]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)) is not None:
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checks_see_the_imports() -> None:
    """The walk finds real edges, or the two tests above would pass on nothing."""
    edges = graph()
    assert "webpubsub.core.router" in edges["webpubsub.node.node"]
    assert "webpubsub.errors" in edges["webpubsub.protocol.names"]
    assert len(edges) > 40
