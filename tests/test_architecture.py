"""The package's shape, checked from its source: one package per stage, imports only downward, no cycles, small files.

The import graph counts every import the code can execute (module level and inside functions); imports under
``if TYPE_CHECKING:`` are left out because they never run. See docs/architecture.md for the layout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peft_debias"

# Stages from the bottom up: a module may import its own package and the packages of LOWER ranks only.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("cda", "models", "cards"),
    ("loader",),  # below eval: eval applies the loader's adapter checks (recorded base, finite tensors)
    ("eval",),
    ("train", "vector", "downstream"),
    ("hub",),
    ("demo", "experiment", "evaluate_modules"),
    ("cli",),
    ("__init__", "__main__"),  # the lazy public API and ``python -m peft_debias``
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (executable imports only)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        edges = graph.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                for target in _targets(module, path, node, set(modules)):
                    while target and target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]  # `from pkg.mod import name` -> pkg.mod
                    if target in modules and target != module:
                        edges.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def stage(module: str) -> str:
    """The stage package of a module (``peft_debias.eval.seat`` -> ``eval``; the top-level files by name)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = stage(module), stage(target)
            if a != b and RANK[b] >= RANK[a]:
                bad.append(f"{module} -> {target} ({a} may not import {b})")
    return bad


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_stages_import_only_downward():
    assert upward_imports(import_graph()) == []


def test_every_stage_package_is_placed_in_a_layer():
    stages = {stage(m) for m in _modules()}
    assert stages <= set(RANK), f"add {sorted(stages - set(RANK))} to LAYERS"


def test_no_modules_at_the_top_level_but_the_api():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], "put a new module in the package of its stage"


def test_modules_and_functions_are_small():
    too_long = []
    for module, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []


# ---- the checks themselves, on planted graphs: each must catch what it is for
def test_find_cycle_catches_a_planted_cycle():
    graph = {"peft_debias.a.x": {"peft_debias.a.y"}, "peft_debias.a.y": {"peft_debias.a.x"}, "peft_debias.a.z": set()}
    assert find_cycle(graph) == ["peft_debias.a.x", "peft_debias.a.y", "peft_debias.a.x"]
    assert find_cycle({"peft_debias.a.x": {"peft_debias.a.y"}, "peft_debias.a.y": set()}) is None


@pytest.mark.parametrize(
    ("module", "target", "bad"),
    [
        ("peft_debias.core.atomic", "peft_debias.eval.seat", True),
        ("peft_debias.train.loop", "peft_debias.vector.apply", True),  # same rank, other stage
        ("peft_debias.eval.seat", "peft_debias.cli.main", True),
        ("peft_debias.eval.seat", "peft_debias.core.errors", False),
        ("peft_debias.eval.seat", "peft_debias.eval.stats", False),
        ("peft_debias.cli.eval", "peft_debias.eval.runner", False),
    ],
)
def test_upward_imports_are_caught(module, target, bad):
    assert bool(upward_imports({module: {target}})) is bad


def test_type_checking_imports_do_not_count(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peft_debias.cli import main\n")
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "peft_debias.cli"]
    assert {id(n) for n in imports} <= _type_checking_nodes(tree)
