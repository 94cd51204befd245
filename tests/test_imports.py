"""The package's modules import each other without cycles.

The dependency graph is built statically with `ast` from every module under src/diffatlas:

* Every import statement counts, wherever it stands: at module level, inside functions
  (a function-level import only postpones a cycle to the first call), and under
  `if TYPE_CHECKING:` (a type-only import still makes one module's interface depend on the other).
* `import diffatlas.a.b` and `from diffatlas.a import b` (b a submodule) are edges to diffatlas.a.b;
  relative imports are resolved against the importing module's package.
* `from diffatlas.pkg import X` where X is not a submodule: the edge goes to the module that
  defines X, found by following the package __init__'s own `from .sub import X` re-exports
  (recursively); when X is defined in the __init__ itself, or cannot be traced, the edge goes to
  the package __init__. So a package whose __init__ imports its submodules, and a submodule that
  imports a sibling through the package (`from ..samplers import X` inside samplers/), is a cycle
  exactly when X is defined in (or only traceable to) the __init__: importing the sibling's module
  directly is never reported, importing the __init__'s own code from a submodule is.
* Parent packages executed implicitly by an import (importing diffatlas.a.b runs diffatlas/a/__init__)
  are not edges, and neither are `importlib.import_module(name)` calls with computed names (the CLI's
  command table, `diffatlas list`'s axis table): those are dispatch by name from the top.

A cycle is a strongly connected component of more than one module. ALLOWED lists the module cycles
knowingly kept, each with its reason (none); any other cycle fails the test. The same check runs on
the graph of the package's top-level parts (diffatlas.X, a subpackage as one unit), where
ALLOWED_BETWEEN_PARTS lists the cycles still closed by command-line modules that live beside the
code they drive.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "diffatlas"

# Cycles knowingly kept: frozenset of module names -> one-line reason. Empty: the package has none.
ALLOWED: dict[frozenset[str], str] = {}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _base(importer: str, node: ast.ImportFrom, mods: dict[str, Path]) -> str | None:
    """The absolute module name a `from ... import` statement imports from."""
    if node.level == 0:
        return node.module
    package = importer if _is_package(importer, mods) else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


_trees: dict[str, ast.Module] = {}


def _tree(name: str, mods: dict[str, Path]) -> ast.Module:
    if name not in _trees:
        _trees[name] = ast.parse(mods[name].read_text(), filename=str(mods[name]))
    return _trees[name]


def definer(package: str, attr: str, mods: dict[str, Path], seen: frozenset[str] = frozenset()) -> str:
    """The module that defines `attr` as seen from `package`: a submodule, the target of one of the
    __init__'s top-level `from .x import attr` re-exports (followed on), or the package itself."""
    if f"{package}.{attr}" in mods:
        return f"{package}.{attr}"
    if package in seen:
        return package
    for node in _tree(package, mods).body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) != attr:
                continue
            base = _base(package, node, mods)
            if base not in mods:
                return package
            if _is_package(base, mods):
                return definer(base, alias.name, mods, seen | {package})
            return base
    return package


def edges(name: str, mods: dict[str, Path]) -> set[str]:
    """The modules of the package that module `name` imports, anywhere in its source."""
    out = set()
    for node in ast.walk(_tree(name, mods)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, node, mods)
            if base not in mods:
                continue
            for alias in node.names:
                if alias.name == "*" or not _is_package(base, mods):
                    out.add(base)
                else:
                    out.add(definer(base, alias.name, mods))
    out.discard(name)  # a package importing a name it defines itself (`from . import X`)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: edges(name, mods) for name in mods}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def _path_in(comp: list[str], g: dict[str, set[str]]) -> str:
    """One cycle through the component's first module, for the failure message: a -> b -> a."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & members):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return " -> ".join(reversed(path)) + f" -> {start}"
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return " ".join(comp)


def test_graph_sees_the_package():
    g = graph()
    assert len(g) > 50
    # a module-level relative import, a function-level one, and one through a package re-export
    assert "diffatlas.errors" in g["diffatlas.io.read"]
    assert "diffatlas.train" in g["diffatlas.commands"]
    assert "diffatlas.samplers.base" in edges("diffatlas.samplers", modules())


def test_detector_finds_cycles_and_resolves_re_exports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    mods = modules()
    # samplers/__init__ re-exports plan_sampling from samplers.plan: the edge goes to the definer
    assert definer("diffatlas.samplers", "plan_sampling", mods) == "diffatlas.samplers.plan"
    assert definer("diffatlas.samplers", "ode", mods) == "diffatlas.samplers.ode"
    assert definer("diffatlas", "__version__", mods) == "diffatlas"  # defined in the __init__ itself


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    new = [c for c in found if frozenset(c) not in ALLOWED]
    assert not new, "import cycles (break them by moving code, not by hiding imports):\n" + "\n".join(
        f"  {_path_in(c, g)}   [component: {', '.join(c)}]" for c in new)
    gone = [sorted(c) for c in ALLOWED if sorted(c) not in found]
    assert not gone, f"ALLOWED lists cycles that no longer exist; remove them: {gone}"


# Cycles between the package's top-level parts (diffatlas.X, a subpackage taken as one unit), kept
# knowingly; each names the modules that close it. Any other cycle between parts fails the test.
ALLOWED_BETWEEN_PARTS: dict[frozenset[str], str] = {
    frozenset({"diffatlas.dynamics", "diffatlas.samplers"}):
        "dynamics.plot draws a process's default sampling grid with samplers.plan; the plot belongs above both",
    frozenset({"diffatlas.guidance", "diffatlas.metrics"}):
        "the CLI module metrics.commands (train-classifier --noisy) trains guidance's noise-aware classifier",
    frozenset({"diffatlas.report", "diffatlas.study"}):
        "the CLI module study.commands writes reports and exports (report.build, report.export) of studies",
}


def _part(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_no_new_cycles_between_parts():
    g: dict[str, set[str]] = {}
    for a, bs in graph().items():
        g.setdefault(_part(a), set()).update(_part(b) for b in bs if _part(b) != _part(a))
    found = cycles(g)
    new = [c for c in found if frozenset(c) not in ALLOWED_BETWEEN_PARTS]
    assert not new, "import cycles between parts of the package:\n" + "\n".join(f"  {_path_in(c, g)}" for c in new)
    gone = [sorted(c) for c in ALLOWED_BETWEEN_PARTS if sorted(c) not in found]
    assert not gone, f"ALLOWED_BETWEEN_PARTS lists cycles that no longer exist; remove them: {gone}"
