"""The house's layers: no import runs upward, no module imports itself in a circle, none is huge.

Layers, bottom to top (docs/architecture.md): errors/atomic/config/extras -> features -> datasets
-> pipelines | models (side by side, neither imports the other) -> evaluation -> reconstruction
-> training -> grid -> cli. Imports are read with ``ast`` (no code runs), including those inside
functions and under ``TYPE_CHECKING``: a lazy import upward is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mindzoo"
LAYERS = {
    "": 0,  # mindzoo/__init__.py, errors, atomic, config, extras
    "features": 1,
    "datasets": 2,
    "pipelines": 3,
    "models": 3,
    "evaluation": 4,
    "reconstruction": 5,
    "training": 6,
    "grid": 7,
    "cli": 8,
    "__main__": 8,
}
SIDE_BY_SIDE = {("pipelines", "models"), ("models", "pipelines")}
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (longest known prefix of each import)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in MODULES:
                    found.add(".".join(parts[:k]))
                    break
    found.discard(name)
    # a package's __init__ presenting its own submodules is its face, not a dependency
    if path.name == "__init__.py":
        found = {m for m in found if not m.startswith(name + ".")}
    return found


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in LAYERS else ""


def relative(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE.parent))


def test_no_import_runs_upward_or_between_pipelines_and_models() -> None:
    bad = []
    for module, targets in GRAPH.items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if LAYERS[there] > LAYERS[here] or (here, there) in SIDE_BY_SIDE:
                bad.append(f"{relative(module)} ({here or 'base'}) imports {relative(target)}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(" <-> ".join(sorted(relative(m) for m in component)))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative(module)} has {lines} lines; split it by concept"


def test_the_checker_sees_imports() -> None:
    """The walker resolves relative and absolute imports (so the tests above can fail)."""
    probe = PACKAGE / "models" / "base.py"
    assert "mindzoo.errors" in GRAPH[module_name(probe)]
    assert layer_of("mindzoo.training.trainer") == "training"
    assert LAYERS[layer_of("mindzoo.training.trainer")] > LAYERS[layer_of(module_name(probe))]
