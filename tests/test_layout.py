"""The library's layout holds its promises (docs/ARCHITECTURE.md): the import graph of
``explainers`` and ``dashboard`` has no cycle, no module imports another module's private name,
each layer of the library imports only the layers below it, and ``explainers`` never imports
Streamlit. Read from the source (every import statement, also inside functions; the ones under
``if TYPE_CHECKING:`` never run and are left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = ("explainers", "dashboard")

#: The library's layers, lowest first: a module may import its own layer and the ones before it.
LAYERS = (
    ("explainers.errors", "explainers.core"),
    ("explainers.io", "explainers.tf_explain_engine", "explainers.render"),
    ("explainers.targets",),
    ("explainers.methods",),
    ("explainers.registry",),
    ("explainers.explanation",),
    ("explainers.evaluation",),
    ("explainers.audit",),
    ("explainers.callbacks", "explainers.training"),
    ("explainers.cli", "explainers.__main__"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(imported module, names taken from it, line) for every import statement that runs."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, tuple(alias.name for alias in node.names), node.lineno))
    return found


def internal_graph() -> dict[str, set[str]]:
    modules = source_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in imports_of(name, path):
            # `from package import submodule` imports the submodule.
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = internal_graph()
    assert sum(len(v) for v in graph.values()) > 50  # the scan sees the real imports
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_is_imported_across_modules():
    offences = []
    for name, path in source_modules().items():
        for module, names, line in imports_of(name, path):
            if module.startswith(PACKAGES) and module != name:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                offences += [f"{name}:{line} imports {module}.{n}" for n in private]
        # `module._name` on an imported module of ours.
        tree = ast.parse(path.read_text())
        aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
            if (isinstance(node, ast.Import) and alias.name.startswith(PACKAGES))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGES))
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offences.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offences, offences


def _layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_library_layers_import_only_downwards():
    graph = internal_graph()
    upward = []
    for name, targets in graph.items():
        own = _layer(name)
        if own is None:
            continue
        for target in targets:
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                upward.append(f"{name} (layer {own}) imports {target} (layer {theirs})")
    assert not upward, upward
    library = [n for n in graph if n.startswith("explainers.") and n != "explainers"]
    assert [n for n in library if _layer(n) is None] == []  # every module has a layer


@pytest.mark.parametrize(
    "module", sorted(n for n in source_modules() if n.startswith("explainers"))
)
def test_the_library_never_imports_streamlit_or_the_dashboard(module):
    path = source_modules()[module]
    imported = [m for m, _, _ in imports_of(module, path)]
    assert not [m for m in imported if m.split(".")[0] in ("streamlit", "dashboard")]
