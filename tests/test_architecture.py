"""The package's import graph has no cycle, and the algorithm packages never import the layers above them."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepkmeans"
TENSOR_ONLY = ("deepkmeans.cluster", "deepkmeans.codec", "deepkmeans.regularize", "deepkmeans.energy")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every deepkmeans module ``path`` imports, wherever in the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert "deepkmeans.lifecycle" in graph and graph["deepkmeans.lifecycle"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_algorithm_packages_import_no_layer_above_them() -> None:
    allowed = {"deepkmeans.errors", "deepkmeans.fileio", "deepkmeans.config", "deepkmeans.plan"}
    for name, imported in _graph().items():
        if name.startswith(TENSOR_ONLY) and not name.endswith("torch_layers"):
            above = {m for m in imported if not m.startswith(TENSOR_ONLY) and m not in allowed}
            assert not above, f"{name} imports {sorted(above)}"
