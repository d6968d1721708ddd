"""The package's import graph has no cycle, and its imports point down the floors of the layout."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepkmeans"
# The floors of the package, lowest first. A module imports modules of its own floor or below, never above; a
# module belongs to the floor of the longest name that covers it (``energy.report`` is not ``energy.rs``).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "models"),  # the vocabulary: errors, configs and the plain model definitions
    ("cluster", "codec", "regularize", "energy.hardware", "energy.layer", "energy.rs"),  # tensors only
    ("plan", "shared", "regularize.regularizer", "energy.torch_layers"),  # the same algorithms on a model's layers
    ("files", "data", "weights", "export"),  # every byte written or read
    ("accounting", "lifecycle", "measure", "results", "train", "calibrate", "distill", "distributed", "importance")
    + ("tuning", "sweep"),  # the library's one path
    ("report", "energy.report", "energy"),  # pages, tables and figures (the energy package re-exports its report)
    ("job",),  # a run and the command line's verbs
    ("cli", "__main__", ""),  # argument parsing, and the package's public names ("" is deepkmeans itself)
)


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


def _floor(module: str) -> int | None:
    """The index in ``FLOORS`` of ``module`` (``None``: on no floor)."""
    best: tuple[int, int] | None = None
    for index, names in enumerate(FLOORS):
        for name in names:
            full = f"deepkmeans.{name}" if name else "deepkmeans"
            covers = module == full or (name != "" and module.startswith(full + "."))
            if covers and (best is None or len(full) > best[0]):
                best = (len(full), index)
    return None if best is None else best[1]


def _upward(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module's imports of a module on a higher floor than its own."""
    found = {name: sorted(m for m in imported if _floor(m) > _floor(name)) for name, imported in graph.items()}
    return {name: above for name, above in found.items() if above}


def test_every_module_stands_on_a_floor() -> None:
    assert not [name for name in _graph() if _floor(name) is None]


def test_imports_point_down_the_floors() -> None:
    assert not _upward(_graph())


def test_floor_finder_finds_an_import_that_runs_back_up() -> None:
    up = {"deepkmeans.codec.model_file": {"deepkmeans.files.atomic", "deepkmeans.errors"}}
    assert _upward(up) == {"deepkmeans.codec.model_file": ["deepkmeans.files.atomic"]}
    assert _upward({"deepkmeans.energy.rs": {"deepkmeans.energy.report"}})  # the longest name decides
    assert _upward({"deepkmeans.report.markdown": {"deepkmeans.job.run"}})
    assert _upward({"deepkmeans.cli": {"deepkmeans"}, "deepkmeans.files.models": {"deepkmeans.codec"}}) == {}
    assert _floor("deepkmeans") != _floor("deepkmeans.unplaced") is None


# Writers that leave a torn file behind when interrupted; outputs go through deepkmeans.files.atomic instead.
IN_PLACE_WRITERS = {"write_text", "write_bytes", "savefig"}
# ZigZag reads its inputs from files in a temporary folder: not outputs of the tool.
IN_PLACE_ALLOWED = {"benchmarks/energy_crosscheck.py"}


def _in_place_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in IN_PLACE_WRITERS:
            found.append(f"{func.attr} (line {node.lineno})")
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        writing = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax")
        if isinstance(func, ast.Name) and func.id == "open" and writing:
            found.append(f"open(..., {mode.value!r}) (line {node.lineno})")
    return found


def test_outputs_are_written_atomically_in_one_place() -> None:
    atomic = PACKAGE / "files" / "atomic.py"
    assert _in_place_writes(atomic), "the atomic writer itself renders figures in memory"
    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    offenders = {
        str(p.relative_to(root)): w
        for p in files
        if p != atomic and str(p.relative_to(root)) not in IN_PLACE_ALLOWED and (w := _in_place_writes(p))
    }
    assert not offenders, offenders


def test_the_run_job_and_file_io_live_in_their_packages() -> None:
    modules = set(_graph())
    assert not {f"deepkmeans.{name}" for name in ("pipeline", "runs", "jobs", "fileio")} & modules
    assert {f"deepkmeans.job.{name}" for name in ("stages", "run", "commands")} <= modules
    assert "deepkmeans.results" in modules and "deepkmeans.job.results" not in modules
    assert {f"deepkmeans.files.{name}" for name in ("atomic", "checkpoints", "models")} <= modules
