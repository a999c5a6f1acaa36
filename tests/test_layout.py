"""The import ladder: every import in src (function-local and ``TYPE_CHECKING`` ones too) runs
downward, and no module imports itself back through a circle.

The ladder (README "Layout"), bottom first; a module may import its own rung and the rungs below:

    errors, _version
    _io, _process, _progress, _render, _work,      low helpers (_render: the report builders reporting
    precision, tokens                              hands to tuning and discovery; _work: work counters)
    models, sites, hooks, prefix_cache             hooks.py sits beside sites.py: it hooks the block
                                                   outputs sites.py defines
    data -> activations -> vectors -> directions -> steering -> serving -> tuning -> discovery
         -> evaluation -> reporting -> pipeline -> cli

``reptune/__init__.py`` is the package facade, on top: ``from reptune import NAME`` counts as an
import of the module the facade took NAME from (``__version__`` -> ``_version``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "reptune"
LADDER: list[tuple[str, ...]] = [
    ("errors", "_version"),
    ("_io", "_process", "_progress", "_render", "_work", "precision", "tokens"),
    ("tuned_blocks",),
    ("models", "sites", "hooks", "prefix_cache", "block_replay"),
    ("data",),
    ("activations",),
    ("vectors",),
    ("directions",),
    ("steering",),
    ("serving",),
    ("tuning",),
    ("discovery",),
    ("evaluation",),
    ("reporting",),
    ("pipeline",),
    ("cli", "__main__"),
    ("reptune",),  # the package facade
]
RANK = {unit: rank for rank, units in enumerate(LADDER) for unit in units}
# Circles allowed for now, each with its reason. Only function-local edges may be listed. None is
# left: the evaluation registry names its built-in tasks as "module:Class" strings and imports them
# on first use, so it no longer imports the task modules that import it.
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module in the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _facade_names() -> dict[str, str]:
    """``{name: module it comes from}`` for the names ``reptune/__init__.py`` re-exports."""
    names = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reptune."):
            for alias in node.names:
                names[alias.asname or alias.name] = _resolve(node.module)
    return names


def _resolve(target: str) -> str:
    """The deepest known module that ``target`` (a module, or ``module.name``) names."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def imports(module: str, source: str, is_package: bool = False) -> Iterator[tuple[str, int, bool]]:
    """``(imported module, line, function-local)`` for each reptune import in ``source``."""
    package = module if is_package else module.rsplit(".", 1)[0]

    def walk(node: ast.AST, local: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, local
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                for alias in child.names:
                    yield f"{base}.{alias.name}", child.lineno, local
            yield from walk(child, inner)

    for target, line, local in walk(ast.parse(source), False):
        if target == "reptune" or target.startswith("reptune."):
            yield target, line, local


def _target_module(target: str, facade: dict[str, str]) -> str:
    name = target.removeprefix("reptune.")
    if target.count(".") == 1 and name in facade and target not in MODULES:
        return facade[name]  # from reptune import NAME: where the facade got NAME
    return _resolve(target)


def unit(module: str) -> str:
    """The ladder rung name of a module: its first component below ``reptune``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "reptune"


def edges() -> list[tuple[str, str, int, bool]]:
    """``(importer, imported, line, function-local)`` for every import between two reptune modules."""
    facade = _facade_names()
    out = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        for target, line, local in imports(module, source, path.name == "__init__.py"):
            imported = _target_module(target, facade)
            if imported != module:
                out.append((module, imported, line, local))
    return out


def ladder_violations(found: list[tuple[str, str, int, bool]]) -> list[str]:
    """One line per import that climbs the ladder (or names a module the ladder lacks)."""
    bad = []
    for module, imported, line, _local in found:
        here, there = unit(module), unit(imported)
        if here not in RANK or there not in RANK:
            bad.append(f"{module}:{line}: {here if here not in RANK else there} is not on the ladder")
        elif RANK[there] > RANK[here]:
            bad.append(f"{module}:{line} imports {imported}: {there} is above {here}")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _graph(found: list[tuple[str, str, int, bool]], skip: set[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, imported, _line, _local in found:
        if (module, imported) not in skip:
            graph[module].add(imported)
    return graph


def test_every_module_is_on_the_ladder_and_imports_run_downward():
    found = edges()
    assert len(found) > 100  # the scan sees the package's imports
    assert ladder_violations(found) == []


def test_no_import_circles():
    found = edges()
    assert circles(_graph([edge for edge in found if not edge[3]])) == []  # module scope: none at all
    listed = {(module, imported) for module, imported, _line, local in found if local}
    assert KNOWN_CIRCLE_EDGES <= listed, "a known circle is gone: remove it from KNOWN_CIRCLE_EDGES"
    assert circles(_graph(found, KNOWN_CIRCLE_EDGES)) == []


@pytest.mark.parametrize(
    ("module", "source", "problem"),
    [
        ("reptune.sites", "def f():\n    from reptune.steering import steer\n", "steering is above sites"),
        ("reptune.data.pairs", "from ..evaluation import tasks\n", "evaluation is above data"),
        ("reptune.vectors", "import reptune.cli\n", "cli is above vectors"),
        ("reptune.hooks", "from reptune import Steering\n", "steering is above hooks"),
    ],
)
def test_the_check_catches_an_upward_import(module, source, problem):
    facade = _facade_names()
    found = [(module, _target_module(target, facade), line, local) for target, line, local in imports(module, source)]
    assert [line.split(": ", 1)[1] for line in ladder_violations(found)] == [problem]


def test_the_check_catches_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
