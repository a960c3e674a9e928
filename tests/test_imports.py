"""The package's import graph: no cycle between modules, and the packages' layering.

Every ``import`` counts, the ones inside functions too (a lazy import that closes a cycle is a
cycle a reader must hold in mind). Read from the source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "ckptconf.reference": "reference",
    "ckptconf.harness": "harness",
    "ckptconf.conformance": "conformance",
    "ckptconf.bench": "bench",
    "ckptconf.cli": "cli",
}
LAYERS = {  # a package may import only these of ckptconf
    "ckptconf.reference": set(),
    "ckptconf.harness": {"ckptconf.reference"},
    "ckptconf.conformance": {"ckptconf.reference", "ckptconf.harness"},
    "ckptconf.bench": {"ckptconf.reference", "ckptconf.harness", "ckptconf.conformance"},
    "ckptconf.cli": {
        "ckptconf.reference",
        "ckptconf.harness",
        "ckptconf.conformance",
        "ckptconf.bench",
    },
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            if path.name.startswith("test_"):
                continue  # a suite's shipped test module: pytest's entry, imported by nothing
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ckptconf modules ``name`` imports (a name from a module: that module)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from . import ranks" imports the submodule; "from .kit import X", the package
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_module_imports_itself_through_others():
    graph = _graph()
    cycles = _cycles(graph)
    shown = [
        " <-> ".join(c) + ": " + "; ".join(f"{a} -> {b}" for a in c for b in graph[a] if b in c)
        for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def test_the_packages_import_down_the_layers_only():
    wrong = []
    for name, targets in _graph().items():
        package = next(p for p in PACKAGES if name == p or name.startswith(p + "."))
        for target in targets:
            other = next(p for p in PACKAGES if target == p or target.startswith(p + "."))
            if other != package and other not in LAYERS[package]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_graph_sees_relative_and_lazy_imports():
    graph = _graph()
    assert "ckptconf.conformance.backend" in graph["ckptconf.conformance.builtin"]  # relative
    assert "ckptconf.reference" in graph["ckptconf.conformance.builtin"]  # inside a function
    assert "ckptconf.harness.crash.filetree" in graph["ckptconf.harness.crash.states"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
