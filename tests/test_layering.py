"""The packages' dependencies point one way (builder -> registry -> cas) and no module
imports another that imports it back, directly or through others.

Imports are read from the source (``ast``), wherever they stand: at the top of a module,
inside a function (a lazy import is still a dependency), or through a package's lazy
attribute table (``_WHERE``, see ``cas.lazy``). Imports under ``if TYPE_CHECKING:`` are
left out: they are annotations only and never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lower first: a package may import only packages to its left.
PACKAGES = ("cas", "registry", "builder")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    _module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
}


def _lazy_tables() -> dict[str, dict[str, str]]:
    """package -> {attribute: submodule} from each package's ``_WHERE`` table."""
    tables: dict[str, dict[str, str]] = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets):
                tables[name] = dict(ast.literal_eval(node.value))
    return tables


LAZY = _lazy_tables()


def _known(name: str) -> str | None:
    """The nearest module of ours that ``name`` (a module or ``module.attribute``) is in."""
    while name:
        if name in MODULES:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    for alias in node.names:
        if f"{source}.{alias.name}" in MODULES:
            yield f"{source}.{alias.name}"
        elif alias.name in LAZY.get(source, {}):
            yield f"{source}.{LAZY[source][alias.name]}"
        else:
            yield source


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node):
                found = _known(target)
                if found is not None and found != module:
                    deps.add(found)
        graph[module] = deps
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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


def test_the_graph_sees_lazy_and_function_level_imports() -> None:
    # cas.cli imports the store's opener inside its commands, and builder.cli names its
    # commands' modules lazily: both must still count, or the test below would pass vacuously.
    assert "cas.open" in GRAPH["cas.cli"]
    assert any(dep.startswith("registry") for dep in GRAPH["builder.base"])


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_down(package: str) -> None:
    allowed = PACKAGES[: PACKAGES.index(package) + 1]
    upward = sorted(
        f"{module} -> {dep}"
        for module, deps in GRAPH.items() if module.split(".")[0] == package
        for dep in deps if dep.split(".")[0] not in allowed
    )
    assert upward == [], f"{package} imports packages above it: {upward}"


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _imported_roots(folder: str) -> dict[str, set[str]]:
    """file -> the top-level names it imports (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


def test_the_benchmarks_do_not_import_the_tests() -> None:
    offenders = sorted(f for f, roots in _imported_roots("bench").items() if "tests" in roots)
    assert offenders == []


def test_testkit_needs_neither_pytest_nor_pybuild() -> None:
    # It checks pybuild's output independently, and the benchmarks run without pytest.
    offenders = sorted(
        f"{f}: {sorted(roots & {'pytest', 'tests', *PACKAGES})}"
        for f, roots in _imported_roots("testkit").items()
        if roots & {"pytest", "tests", *PACKAGES}
    )
    assert offenders == []


def test_no_module_is_over_500_lines() -> None:
    # One concern per module (house style): a longer one is asking to be split.
    long = sorted(f"{name} ({n})" for name, path in MODULES.items()
                  if (n := len(path.read_text().splitlines())) > 500)
    assert long == []
