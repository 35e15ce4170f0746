"""The floors of the house (../design.md): no import circles, and each floor imports only the floors below.

Read from the source with ``ast``, imports inside functions included (a deferred import still couples
two modules). Floors: ``solvers`` and ``surrogates`` (independent of each other and of everything
else here); the evaluation library ``benchmarks`` (never ``streaming``); ``streaming``; on top the
measurement scripts ``benchmarks.studies``, which nothing imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("solvers", "surrogates", "streaming", "benchmarks")
STUDIES = "benchmarks.studies"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module of ours that ``name`` (a dotted import target) lives in, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in ``base``
        else:
            continue
        found.update(o for o in map(_owner, targets) if o is not None)
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _floor(module: str) -> str:
    return "studies" if module == STUDIES or module.startswith(STUDIES + ".") else module.split(".")[0]


ALLOWED = {  # floor -> floors it may import
    "solvers": {"solvers"},
    "surrogates": {"surrogates"},
    "benchmarks": {"benchmarks", "solvers", "surrogates"},
    "streaming": {"streaming", "benchmarks", "solvers", "surrogates"},
    "studies": {"studies", "streaming", "benchmarks", "solvers", "surrogates"},
}


def test_the_reader_sees_the_packages():
    # the checks below would pass vacuously on an empty graph
    assert {"streaming.job", "streaming.assembly", "benchmarks.metrics", f"{STUDIES}.throughput"} <= set(GRAPH)
    assert "streaming.assembly" in GRAPH["streaming.job"] and "streaming.job" in GRAPH[f"{STUDIES}.throughput"]


def test_no_import_circles():
    assert _cycles(GRAPH) == [], "modules that import each other (directly or around a circle)"


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("floor", sorted(ALLOWED))
def test_each_floor_imports_only_the_floors_below(floor):
    bad = {m: sorted(d for d in deps if _floor(d) not in ALLOWED[floor])
           for m, deps in GRAPH.items() if _floor(m) == floor}
    assert {m: d for m, d in bad.items() if d} == {}
