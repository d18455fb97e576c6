"""The package's layout rules, checked by reading the source with `ast` (no module is imported, except in the
last test, which checks the public names).

- `replay/` is pure: it imports only the standard library and `duroxide_celery.replay` itself.
- `providers/` (the store) imports no Celery (`celery`, `kombu`, `billiard`).
- No import cycle among the package's modules at module level.
- `py.typed` ships, and every name in `duroxide_celery.__all__` imports.

Known violations are listed explicitly below (each with the reason it is there): a test fails on any violation
that is not listed. When a listed one is fixed, delete its entry so it cannot come back.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "duroxide_celery"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE
CELERY_LIBRARIES = frozenset({"celery", "kombu", "billiard"})

# --- Known violations (allowlists). Fixing one means deleting its entry here. ---

#: (importing module, imported top-level name) pairs in `replay/` that are neither the standard library nor
#: `duroxide_celery.replay`. Empty: the replay engine is pure.
KNOWN_REPLAY_IMPURITIES: frozenset[tuple[str, str]] = frozenset()

#: (importing module, imported top-level name) pairs in `providers/` that import Celery. Empty.
KNOWN_PROVIDER_CELERY_IMPORTS: frozenset[tuple[str, str]] = frozenset()

#: Module-level import cycles that exist today. A cycle found in the code must lie inside one of these sets; a new
#: cycle, or a module joining one, fails the test. Empty: the module-level import graph is acyclic.
KNOWN_IMPORT_CYCLES: tuple[frozenset[str], ...] = ()

#: Cycles that close only through deferred imports (inside a function, or under `if TYPE_CHECKING:`). They do
#: not break importing, but they are the two-way dependencies issue 12 sets out to remove; listed so that no
#: new one appears meanwhile.
KNOWN_DEFERRED_IMPORT_CYCLES: tuple[frozenset[str], ...] = (
    # tasks/install.py imports Runtime under TYPE_CHECKING (install_tasks builds the executors from its parts);
    # runtime.py imports tasks/install.py. The executors (turn.py, activity.py) import no Runtime.
    frozenset({f"{PACKAGE}.runtime", f"{PACKAGE}.tasks.install"}),
)


# --- Reading the package ---


@dataclass(frozen=True)
class Import:
    module: str  # the resolved absolute module named by the statement (`from X import ...` -> X)
    names: tuple[str, ...]  # the names of a `from X import a, b` (empty for `import X`)
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found[name] = Module(name, path, is_package, tree)
    return found


MODULES = _modules()


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative levels resolved against `module`."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    assert base, f"{module.path}:{node.lineno}: relative import goes above the top-level package"
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: Module, *, module_level_only: bool) -> Iterator[Import]:
    """Every import statement of `module`; with module_level_only, only those that run when the module is
    imported: not inside a function (or lambda) body, not in the body of `if TYPE_CHECKING:` (its `else` runs).
    Class bodies run at import time, so their imports count."""

    def visit(node: ast.AST) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, (), node.lineno)
            return
        if isinstance(node, ast.ImportFrom):
            yield Import(_resolve(module, node), tuple(a.name for a in node.names), node.lineno)
            return
        if module_level_only:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                # Decorators and default values run at import time; the body does not.
                for part in [*getattr(node, "decorator_list", []), node.args]:
                    yield from visit(part)
                return
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.orelse:
                    yield from visit(child)
                return
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(module.tree)


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _under(subpackage: str) -> list[Module]:
    prefix = f"{PACKAGE}.{subpackage}"
    modules = [m for m in MODULES.values() if _within(m.name, prefix)]
    assert modules, f"no modules under {prefix}: has the package moved?"
    return modules


# --- (a) replay/ is pure ---


def test_replay_imports_only_the_standard_library_and_itself() -> None:
    replay = f"{PACKAGE}.replay"
    found: dict[tuple[str, str], str] = {}
    for module in _under("replay"):
        for imp in _imports(module, module_level_only=False):  # lazy imports count too
            if _within(imp.module, replay) or _top(imp.module) in sys.stdlib_module_names:
                continue
            found[(module.name, _top(imp.module))] = f"{module.path.relative_to(PACKAGE_DIR.parent)}:{imp.line}"
    new = {key: where for key, where in found.items() if key not in KNOWN_REPLAY_IMPURITIES}
    assert not new, f"replay/ must import only the standard library and itself; new imports: {new}"


# --- (b) providers/ imports no Celery ---


def test_providers_import_no_celery() -> None:
    found: dict[tuple[str, str], str] = {}
    for module in _under("providers"):  # includes providers/migrations
        for imp in _imports(module, module_level_only=False):
            if _top(imp.module) in CELERY_LIBRARIES:
                found[(module.name, _top(imp.module))] = f"{module.path.relative_to(PACKAGE_DIR.parent)}:{imp.line}"
    new = {key: where for key, where in found.items() if key not in KNOWN_PROVIDER_CELERY_IMPORTS}
    assert not new, f"providers/ must not import {sorted(CELERY_LIBRARIES)}; new imports: {new}"


# --- (c) no module-level import cycle ---


def _import_graph(*, module_level_only: bool = True) -> dict[str, set[str]]:
    """Edges module -> package module it imports (by default only at module level). `from X import name` points
    at `X.name` when that is a module of the package (a submodule import), else at X. Importing `a.b.c` also runs
    `a` and `a.b`, but those implied parent edges are left out, as import-graph tools do: every package's
    `__init__` importing its own submodules would otherwise be a cycle."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES.values():
        for imp in _imports(module, module_level_only=module_level_only):
            if not _within(imp.module, PACKAGE):
                continue
            targets = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in MODULES]
            if len(targets) < len(imp.names) or not imp.names:
                targets.append(imp.module)  # some names are attributes of X itself (or `import X`)
            for target in targets:
                assert target in MODULES, f"{module.path}:{imp.line}: imports {target}, which is not a module"
                if target != module.name:
                    graph[module.name].add(target)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm (iterative); returns the components of more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(sorted(graph[root]))))
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(frozenset(component))
    return components


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set(), "g": {"g"}}
    assert sorted(map(sorted, _strongly_connected(graph))) == [["a", "b", "c"], ["d", "e"]]


def test_graph_sees_relative_and_submodule_imports() -> None:
    graph = _import_graph()
    # `from .providers import PostgresProvider, SqliteProvider` in the package's __init__.
    assert f"{PACKAGE}.providers" in graph[PACKAGE]
    assert all(_within(target, PACKAGE) for targets in graph.values() for target in targets)


def test_no_new_module_level_import_cycle() -> None:
    cycles = _strongly_connected(_import_graph())
    new = [sorted(c) for c in cycles if not any(c <= known for known in KNOWN_IMPORT_CYCLES)]
    assert not new, f"new module-level import cycles in {PACKAGE} (an import inside a function does not count): {new}"


def test_no_new_import_cycle_counting_deferred_imports() -> None:
    """Stricter: imports inside functions and under TYPE_CHECKING count too."""
    cycles = _strongly_connected(_import_graph(module_level_only=False))
    new = [sorted(c) for c in cycles if not any(c <= known for known in KNOWN_DEFERRED_IMPORT_CYCLES)]
    assert not new, f"new import cycles in {PACKAGE} (through deferred imports): {new}"


# --- (d) typing marker and public names ---


def test_py_typed_ships() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_every_public_name_imports() -> None:
    package = importlib.import_module(PACKAGE)
    names = package.__all__
    assert len(names) == len(set(names)), "duplicate names in __all__"
    missing = [name for name in names if not hasattr(package, name)]
    assert not missing, f"in {PACKAGE}.__all__ but not importable: {missing}"
    for name in names:
        namespace: dict[str, object] = {}
        exec(f"from {PACKAGE} import {name}", namespace)  # noqa: S102 - the statement users write
        assert namespace[name] is getattr(package, name)
