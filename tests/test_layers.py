"""The package's layers (docs/design.md): no import cycle, light entry points stay light, short functions."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clipdro"
MAX_FUNCTION_LINES = 80
# docs/design.md's layer picture, bottom first: a module imports only from its own layer or those below.
# A module belongs to the longest prefix listed (clipdro.llm.train is in the top layer, the rest of
# clipdro.llm in the third).
LAYERS = [
    ["clipdro", "clipdro.errors", "clipdro.runtime", "clipdro.distributed", "clipdro.info", "clipdro.stats",
     "clipdro.config", "clipdro.data.config", "clipdro.data.images", "clipdro.model_configs"],
    ["clipdro.state", "clipdro.tempnet", "clipdro.losses", "clipdro.data", "clipdro.checkpoint",
     "clipdro.run_logging"],
    ["clipdro.towers", "clipdro.models", "clipdro.analysis", "clipdro.engine", "clipdro.llm"],
    ["clipdro.train_config", "clipdro.trained_run"],
    ["clipdro.eval"],
    ["clipdro.train", "clipdro.llm.train", "clipdro.llm.tau_report", "clipdro.llm.cli", "clipdro.export",
     "clipdro.report", "clipdro.cli"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the clipdro modules it imports anywhere in its source: top level, inside functions and
    under ``if TYPE_CHECKING`` alike (``from pkg import name`` counts as importing pkg.name when that is a
    module, else pkg)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("clipdro"):
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                imported |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("clipdro")}
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_clipdro_modules():
    graph = import_graph()
    assert "clipdro.losses.contrastive" in graph and "clipdro.config" in graph["clipdro.engine"]
    assert find_cycle(graph) is None


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix of ``module`` listed there."""
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of LAYERS (tests/test_layers.py, docs/design.md)"
    return max(matches)[1]


def test_every_import_points_to_its_own_layer_or_one_below():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
              if layer_of(target) > layer_of(module)]
    assert not upward, f"imports against docs/design.md's layers: {', '.join(sorted(upward))}"


def test_the_shared_engine_and_the_llm_path_load_no_clip_training_stack():
    code = ("import sys, clipdro.engine, clipdro.llm.train, clipdro.llm.tau_report\n"
            "print(sorted(m for m in ('open_clip', 'webdataset', 'faiss', 'clipdro.train', 'clipdro.train_config')"
            " if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip()
    assert loaded == "[]"


def test_no_function_in_clipdro_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module_name(path)}.{node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
