"""The package's layering, read from its source with ``ast`` (nothing is imported).

Layers, bottom to top::

    core  <  referees, lab  <  api  <  app  <  bptt_jax/__init__.py, __main__.py

A module may import its own layer and the layers its row below names, never a
higher one; the import graph between modules has no cycle; and the modules of
``core``, ``referees``, ``lab`` and ``api`` import at module level only (an
import hidden in a function body is how a cycle or an upward import gets
dodged), save for the lazy imports of optional heavy dependencies listed in
``LAZY_IMPORTS_ALLOWED``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "bptt_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# layer -> the layers its modules may import (their own included).
ALLOWED = {
    "core": {"core"},
    "referees": {"core", "referees"},
    "lab": {"core", "lab"},
    "api": {"core", "referees", "lab", "api"},
    "app": {"core", "referees", "lab", "api", "app"},
    "top": {"core", "referees", "lab", "api", "app", "top"},
}

# Layers whose modules must import at module level only.
NO_FUNCTION_IMPORTS = {"core", "referees", "lab", "api"}

# (module, imported top-level name) pairs that may be imported inside a
# function: optional or heavy third-party dependencies that most users of the
# module never need, so importing them at module level would make every
# ``import bptt_jax`` pay for them (optax loads much of its own stack,
# matplotlib seconds of start-up, torch is not even a dependency). Never a
# module of bptt_jax itself: a lazy import of our own code only hides a cycle.
LAZY_IMPORTS_ALLOWED = {
    ("bptt_jax.core.clipping", "optax"),  # make_clipper: only for optax users
    ("bptt_jax.api.interop", "torch"),  # to_torch: torch is optional
}
LAZY_THIRD_PARTY = {"optax", "matplotlib", "torch"}


# --------------------------------------------------------------------------- reading


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """``bptt_jax.core.bptt`` -> ``core``; the package itself and ``__main__`` -> ``top``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED and parts[1] != "top":
        return parts[1]
    return "top"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(source: str, module: str, is_package: bool, known: set[str]):
    """Yields ``(imported module, line, function name or None)`` for every import
    statement in ``source``; ``from pkg import name`` counts as an import of
    ``pkg.name`` where that is a module in ``known``, else of ``pkg``."""
    tree = ast.parse(source)

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = getattr(child, "name", "<lambda>")
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, function
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, is_package, child)
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    yield (sub if sub in known else target), child.lineno, function
            yield from visit(child, inner)

    yield from visit(tree, None)


def read_package(root: pathlib.Path = ROOT):
    """``{module: [(imported, line, function), ...]}`` over every .py file under root."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        name: list(imports_of(path.read_text(), name, path.name == "__init__.py", known))
        for name, path in files.items()
    }


def internal_graph(imports) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its body)."""
    known = set(imports)
    return {
        m: {
            # ``import bptt_jax.core.x`` or a name inside a known module.
            next((t for t in _prefixes(target) if t in known), target)
            for target, _, _ in found
            if target.split(".")[0] == PACKAGE
        }
        & known
        for m, found in imports.items()
    }


def _prefixes(dotted: str):
    parts = dotted.split(".")
    return (".".join(parts[:i]) for i in range(len(parts), 0, -1))


# --------------------------------------------------------------------------- rules


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, plus modules
    importing themselves (Tarjan's algorithm), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) not in ALLOWED[layer_of(m)]
    )


def function_imports(imports) -> list[str]:
    bad = []
    for m, found in imports.items():
        if layer_of(m) not in NO_FUNCTION_IMPORTS:
            continue
        for target, line, function in found:
            top = target.split(".")[0]
            if function is None:
                continue
            if top in LAZY_THIRD_PARTY and (m, top) in LAZY_IMPORTS_ALLOWED:
                continue
            bad.append(f"{m}:{line} imports {target} inside {function}()")
    return sorted(bad)


# --------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def imports():
    return read_package()


@pytest.fixture(scope="module")
def graph(imports):
    return internal_graph(imports)


def test_the_walk_sees_the_package(imports, graph):
    # Not vacuous: every layer's modules are found, and known edges are in the graph.
    assert {layer_of(m) for m in imports} == set(ALLOWED)
    assert len(imports) >= 30
    assert "bptt_jax.core.deep" in graph["bptt_jax.api.gradients"]  # from ..core.deep import
    assert "bptt_jax.core.params" in graph["bptt_jax.core.bptt"]  # from .params import
    assert "bptt_jax.app.cli" in graph["bptt_jax.__main__"]
    assert "bptt_jax.app.commands" in graph["bptt_jax.app.cli"]
    assert sum(len(t) for t in graph.values()) >= 60


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_from_a_higher_layer(graph):
    bad = upward_imports(graph)
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_imports_inside_functions_below_the_app(imports):
    bad = function_imports(imports)
    assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_the_allowed_lazy_imports_still_exist(imports):
    # A stale exception would silently allow a new lazy import in its module.
    lazy = {
        (m, target.split(".")[0])
        for m, found in imports.items()
        for target, _, function in found
        if function is not None
    }
    assert lazy >= LAZY_IMPORTS_ALLOWED


# --------------------------------------------------------------------------- the checks themselves


def test_a_cycle_is_found():
    graph = {
        "bptt_jax.core.a": {"bptt_jax.core.b"},
        "bptt_jax.core.b": {"bptt_jax.core.c"},
        "bptt_jax.core.c": {"bptt_jax.core.a"},
        "bptt_jax.core.d": {"bptt_jax.core.d"},
        "bptt_jax.core.e": {"bptt_jax.core.a"},
    }
    assert find_cycles(graph) == [
        ["bptt_jax.core.a", "bptt_jax.core.b", "bptt_jax.core.c"],
        ["bptt_jax.core.d"],
    ]
    assert find_cycles({"bptt_jax.core.a": {"bptt_jax.core.b"}, "bptt_jax.core.b": set()}) == []


def test_upward_and_sideways_imports_are_found():
    graph = {
        "bptt_jax.lab.tasks": {"bptt_jax.api.validate", "bptt_jax.core.bptt"},
        "bptt_jax.lab.diagnostics": {"bptt_jax.referees.autodiff"},  # lab may not use referees
        "bptt_jax.core.rnn": {"bptt_jax"},  # the top package is above everything
        "bptt_jax.api.model": {"bptt_jax.lab.tasks", "bptt_jax.referees.autodiff"},  # fine
        "bptt_jax.app.cli": {"bptt_jax.api.model"},  # fine
    }
    assert upward_imports(graph) == [
        "bptt_jax.core.rnn (core) imports bptt_jax (top)",
        "bptt_jax.lab.diagnostics (lab) imports bptt_jax.referees.autodiff (referees)",
        "bptt_jax.lab.tasks (lab) imports bptt_jax.api.validate (api)",
    ]


def test_relative_imports_resolve_to_modules(tmp_path):
    pkg = tmp_path / PACKAGE
    for sub in ("core", "lab", "api"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .api import model\n")
    (pkg / "core" / "rnn.py").write_text("import jax\n")
    (pkg / "api" / "model.py").write_text("from ..core.rnn import f\nfrom . import helpers\n")
    (pkg / "api" / "helpers.py").write_text("import bptt_jax.core.rnn\n")
    (pkg / "lab" / "tasks.py").write_text(
        "from ..core import rnn\n\ndef f():\n    from ..api.model import g\n    import optax\n"
    )
    found = read_package(pkg)
    graph = internal_graph(found)
    assert graph == {
        "bptt_jax": {"bptt_jax.api.model"},
        "bptt_jax.core": set(),
        "bptt_jax.core.rnn": set(),
        "bptt_jax.api": set(),
        "bptt_jax.api.model": {"bptt_jax.core.rnn", "bptt_jax.api.helpers"},
        "bptt_jax.api.helpers": {"bptt_jax.core.rnn"},
        "bptt_jax.lab": set(),
        "bptt_jax.lab.tasks": {"bptt_jax.core.rnn", "bptt_jax.api.model"},
    }
    assert upward_imports(graph) == [
        "bptt_jax.lab.tasks (lab) imports bptt_jax.api.model (api)",
    ]
    # optax is allowed lazily only where it is listed; our own modules never.
    assert function_imports(found) == [
        "bptt_jax.lab.tasks:4 imports bptt_jax.api.model inside f()",
        "bptt_jax.lab.tasks:5 imports optax inside f()",
    ]
