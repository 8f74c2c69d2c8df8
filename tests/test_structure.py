"""The package's shape: no import cycles; algorithms never reach for commands or I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minitron"
# Modules that take a model and data and return results: they must not load,
# save or print (that is what minitron.commands and minitron.cli are for).
ALGORITHMS = ("importance", "prune", "layers", "eval.perplexity")
FORBIDDEN = ("minitron.io", "minitron.commands", "minitron.cli", "minitron.plots")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every minitron module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("minitron")}


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def edges(module: str) -> set[str]:
    """Imports of ``module`` that are modules of the package (not names in them)."""
    return {name for name in GRAPH[module] if name in GRAPH and name != module}


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges(module)):
            if target == "minitron" or module.startswith(target + "."):
                continue  # a package's __init__ and its own submodules
            if state.get(target) == "open":
                cycle = " -> ".join([*path[path.index(target) :], target])
                pytest.fail(f"import cycle: {cycle}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithms_do_not_import_commands_or_io(name):
    """A package (importance, prune) is checked module by module."""
    modules = [m for m in GRAPH if m == f"minitron.{name}" or m.startswith(f"minitron.{name}.")]
    assert modules, f"no module minitron.{name}"
    for module in modules:
        bad = {imp for imp in GRAPH[module] if imp.startswith(FORBIDDEN)}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_perplexity_lives_in_one_module():
    """Held-out and sliding-window perplexity share ``minitron.eval.perplexity``."""
    assert "minitron.evaluate" not in GRAPH
    users = [m for m, imports in GRAPH.items() if "minitron.eval.perplexity" in imports]
    assert users
