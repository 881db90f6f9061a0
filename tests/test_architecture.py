"""Guards for the architecture: core/ never imports streamlit, and no import cycle exists in core/.

A plain import-graph check with the standard library (``ast``): every ``import`` and
``from ... import`` in every module of ``core/`` counts, including those inside functions (a
function-level import hides a cycle, it does not remove one) and those under
``if TYPE_CHECKING:`` (a dependency of the types is a dependency of the design).

The house itself: every module of ``core/`` lives in a wing (a package) but the leaves listed in
``TOP_LEVEL``, none grows past ``MAX_LINES``, and ``docs/architecture.md`` names exactly the modules
that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def imported_names(path: Path, this_module: str) -> set[str]:
    """Absolute names of the modules (or module attributes) that ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = this_module if path.name == "__init__.py" else this_module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Edges between modules of core/: ``a -> b`` when a imports b (or a name from b), or a module inside the
    package b (whose ``__init__`` runs first)."""
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path, name):
            # "core.store.db.Store" -> the longest prefix that is a module of core/
            candidate = imported
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                # importing core.a.b runs core/a/__init__.py first: that package is a dependency too
                # (unless this module lives inside it)
                parts = candidate.split(".")
                for i in range(2, len(parts)):
                    package = ".".join(parts[:i])
                    if package in modules and not name.startswith(package + "."):
                        targets.add(package)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return cycles


def _is_package_init_edge(a: str, b: str) -> bool:
    """A package's ``__init__`` re-exporting its own submodule is not a cycle of concepts."""
    return b.startswith(a + ".")


def test_core_never_imports_streamlit() -> None:
    offenders = []
    for name, path in core_modules().items():
        for imported in imported_names(path, name):
            if imported == "streamlit" or imported.startswith("streamlit."):
                offenders.append(name)
    assert not offenders, f"core/ must not import streamlit; found in: {sorted(set(offenders))}"


def test_no_import_cycles_in_core() -> None:
    graph = {
        module: {target for target in targets if not _is_package_init_edge(module, target)}
        for module, targets in import_graph().items()
    }
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in core/ (break them by moving the shared piece down a layer): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_function_level_and_type_checking_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from core.hidden import X\n"
        "def f():\n    from core.lms.embedded import engine\n    import core.store\n"
    )
    names = imported_names(source, "core.mod")
    assert "core.lms.embedded" in names and "core.store" in names
    assert "core.hidden" in names  # a TYPE_CHECKING import counts as well


TOP_LEVEL = {"core", "core.__main__", "core.cli", "core.crash", "core.errors", "core.paths"}
"""The modules allowed outside a wing: the package itself, the CLI and the leaves every wing uses."""
MAX_LINES = 450


def test_every_module_is_in_a_wing_but_the_leaves() -> None:
    outside = sorted(name for name, path in core_modules().items()
                     if path.parent == CORE and path.name != "__init__.py" and name not in TOP_LEVEL)
    assert not outside, f"modules of core/ outside any wing (move them into a package of core/): {outside}"


def test_the_leaves_import_no_wing() -> None:
    wings = set(core_modules()) - TOP_LEVEL
    graph = import_graph()
    for leaf in TOP_LEVEL - {"core", "core.__main__", "core.cli"}:
        assert not graph[leaf] & wings, f"{leaf} is a leaf but imports {sorted(graph[leaf] & wings)}"


def test_no_module_grows_past_the_bound() -> None:
    long = {name: n for name, path in core_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def documented_modules(text: str) -> set[str]:
    """The modules ``docs/architecture.md`` maps: every ``core/...py`` path in its text."""
    return {module_name(ROOT / match) for match in re.findall(r"`(core/[\w/]+\.py)`", text)}


def test_the_architecture_map_names_exactly_the_modules_that_exist() -> None:
    documented = documented_modules((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    existing = set(core_modules())
    assert not existing - documented, f"modules missing from docs/architecture.md: {sorted(existing - documented)}"
    assert not documented - existing, f"docs/architecture.md names modules that do not exist: {sorted(documented - existing)}"


def test_the_map_check_reads_paths(tmp_path: Path) -> None:
    assert documented_modules("`core/run/worker.py` and `core/store/__init__.py`, not core/x.py") == {
        "core.run.worker", "core.store"}
