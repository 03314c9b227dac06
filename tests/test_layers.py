"""The apps stand in layers, and no import may break them.

``balancer/`` is the ground floor (desired state, registry, routing, dispatch,
the wire contract, the request log).  ``inference/`` (the client-facing APIs)
and ``agents/`` (``run_agent`` and the llama.cpp runtime) stand on it and never
on each other; ``balancer/`` imports neither.  The panel (``balancer/panel/``)
is the UI over all of them and may use each.  Every import counts, including
ones inside functions and ``TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each layer may not import.
FORBIDDEN = {
    "balancer": {"inference", "agents"},
    "inference": {"agents"},
    "agents": {"inference"},
}
# Parts of a layer that the rule does not cover, and why.
EXEMPT = {
    # The admin panel is the UI over every app.
    ROOT / "balancer" / "panel",
    # Migrations are history: they keep naming the app a model lived in then.
    ROOT / "balancer" / "migrations",
    ROOT / "inference" / "migrations",
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layer_violations(layer: str) -> list[str]:
    violations = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        if any(path.is_relative_to(exempt) for exempt in EXEMPT):
            continue
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[layer]:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return violations


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_or_beside_it(layer: str) -> None:
    assert layer_violations(layer) == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The check itself must not go blind: a nested import is still an import.
    module = tmp_path / "module.py"
    module.write_text(
        "def late():\n    from inference.views import x\n    import agents.runtime\n"
    )
    assert imported_modules(module) == [(2, "inference.views"), (3, "agents.runtime")]
