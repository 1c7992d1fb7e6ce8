"""The package's import graph has no cycle, and no module imports another module's private name.

The graph is read from the source with ast: every import statement, at module level and inside
functions alike (a function-level import only postpones a cycle). A package ``__init__`` that
discovers its submodules with pkgutil at runtime (cambench.methods, cambench.metrics,
cambench.models) has no edge to them here, which is the one way a package may load its own parts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path = SRC, package: str = "cambench") -> dict[str, Path]:
    """Dotted module name -> file, every module of ``package`` (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of a package module in ``path``.

    ``from . import x`` and ``from pkg import x`` stand for the submodule ``pkg.x`` when there is one;
    ``import a.b`` for ``a.b``. Imports of modules outside ``modules`` are left out."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source not in modules:
                continue
            plain = []
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    out.append((f"{source}.{alias.name}", [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                out.append((source, plain, node.lineno))
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, _, line in imports_of(name, path, modules):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def components(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a, b, ..., a) per strongly connected component of more than one module."""
    out = []
    for component in components(graph):  # a shortest way back to the first module, within the component
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in {w for v in frontier for w in graph[v]}:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in component and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        out.append(paths[last] + [start])
    return sorted(out)


def shown(path: Path) -> str:
    """The path relative to the repository where it lies there (a planted package in tmp_path does not)."""
    return str(path.relative_to(SRC.parent)) if path.is_relative_to(SRC.parent) else str(path)


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """The cycle edge by edge (file and line of each import), and every module caught in the same knot."""
    steps = [f"{a} -> {b} ({shown(modules[a])}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    knot = next(c for c in components(graph) if cycle[0] in c)
    extra = f"\n    (the knot also holds {', '.join(sorted(knot - set(cycle)))})" if len(knot) > len(cycle) - 1 else ""
    return "\n    ".join(steps) + extra


def private_imports(modules: dict[str, Path]) -> list[str]:
    """'file:line: from module import _name' for every private name one package module takes from another."""
    out = []
    for name, path in modules.items():
        for source, names, line in imports_of(name, path, modules):
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    out.append(f"{shown(path)}:{line}: from {source} import {imported}")
    return out


def test_no_import_cycle():
    modules = module_files()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, graph, modules) for c in found)


def test_no_private_name_imported_across_modules():
    found = private_imports(module_files())
    assert not found, "private names imported from another module (make them public or move them):\n  " + \
        "\n  ".join(found)


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return module_files(root, "pkg")


def test_graph_sees_function_level_relative_and_submodule_imports(tmp_path):
    modules = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from .sub import b\n",       # function level; b is a module
        "pkg/sub/__init__.py": "from .. import c\n",               # c is a module of the parent
        "pkg/sub/b.py": "import pkg.c\n",
        "pkg/c.py": "from pkg.sub import helper, _hidden\n",     # names, not modules: the package
    })
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.sub.b": 2}
    assert graph["pkg.sub"] == {"pkg.c": 1}
    assert graph["pkg.sub.b"] == {"pkg.c": 1}
    assert graph["pkg.c"] == {"pkg.sub": 1}
    assert cycles(graph) == [["pkg.c", "pkg.sub", "pkg.c"]]
    assert private_imports(modules) == [f"{tmp_path / 'pkg/c.py'}:1: from pkg.sub import _hidden"]


def test_pkgutil_discovery_is_no_edge(tmp_path):
    modules = _write(tmp_path, {
        "pkg/__init__.py": "import importlib, pkgutil\nfor m in pkgutil.iter_modules(__path__):\n"
                           "    importlib.import_module(f'{__name__}.{m.name}')\n",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "",
    })
    graph = import_graph(modules)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.c": 1}, "pkg.c": {}}
    assert cycles(graph) == []


@pytest.mark.parametrize("planted", [
    {"pkg/a.py": "from .b import x\n", "pkg/b.py": "def g():\n    from . import a\n"},
    {"pkg/a.py": "import pkg.b\n", "pkg/b.py": "from .c import y\n", "pkg/c.py": "from pkg import a\n"},
    {"pkg/__init__.py": "from . import a\n", "pkg/a.py": "from . import helper\n"},  # helper: a name of pkg
])
def test_planted_cycle_is_found_and_printed(tmp_path, planted):
    modules = _write(tmp_path, {"pkg/__init__.py": "", **planted})
    graph = import_graph(modules)
    found = cycles(graph)
    assert len(found) == 1 and found[0][0] == found[0][-1] and len(found[0]) == len(planted) + 1
    assert set(found[0]) == {m for m in modules if m != "pkg" or "pkg/__init__.py" in planted}
    text = describe(found[0], graph, modules)
    assert all(f"{a} -> {b} ({modules[a]}:" in text for a, b in zip(found[0], found[0][1:]))
