"""The library's layers (README, Architecture): a module imports only from the layers above its own."""

from conftest import REPO

from negflow.dependencies import library_imports

LAYERS = [
    {"errors", "files", "bundle", "layout", "progress"},
    {"refs", "shards", "selection", "negatives", "text_ids", "grades", "rounds"},
    {"store"},
    {"models", "devices"},
    {"read_pairs", "pair_shapes", "beir", "prepare", "judgments", "embed", "search", "score", "candidates", "export"}
    | {"calibration", "bm25", "sources"}
    | {"training", "report", "audit", "evaluate", "finetune", "demo", "provenance"},
    {"stage"},
    {"config", "dependencies", "hooks"},
    {"cli", "display"},
    {"dropin"},
]
STAGE_LAYER = 4  # stage modules may also use each other (the audit replays export's selection)


def test_every_library_module_has_a_layer_and_imports_only_from_layers_above():
    layer_of = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    modules = {p.stem: p for p in (REPO / "scripts" / "negflow").glob("*.py") if p.stem != "__init__"}
    assert set(modules) == set(layer_of)
    wrong = [
        (module, used)
        for module, path in modules.items()
        for used in library_imports(path)
        if not (layer_of[used] < layer_of[module] or layer_of[used] == layer_of[module] == STAGE_LAYER)
    ]
    assert wrong == []


SPAWNS = {"subprocess", "Popen", "multiprocessing", "fork", "posix_spawn", "ProcessPoolExecutor", "snakemake"}


def test_the_unit_layer_starts_no_process():
    """The README's "the unit layer runs no subprocess": a test that names a way to start a process
    (subprocess, multiprocessing, fork, the Snakemake runner), itself or through a function of its own
    module, is marked slow, or its module is. A reading of the code, not a trace: a process started inside
    a library it calls is not seen (test_store's worker processes were found by tracing the unit layer's
    forks). Before, four unit tests (test_devices, test_progress, two in test_read_pairs) named a way to
    start processes; unmarked, each fails this test."""
    import ast

    def named(node) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
        }

    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        if "mark.slow" in "".join(ast.unparse(n) for n in tree.body if isinstance(n, ast.Assign)):
            continue  # pytestmark = pytest.mark.slow
        functions = {n.name: named(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
        spawning = set(SPAWNS)
        while grown := {f for f, names in functions.items() if names & spawning} - spawning:
            spawning |= grown  # helpers that start processes, and helpers that call them
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            if any("mark.slow" in ast.unparse(d) for d in node.decorator_list):
                continue
            if found := functions[node.name] & spawning:
                unmarked.append(f"{path.name}::{node.name} ({', '.join(sorted(found))})")
    assert not unmarked, "unit tests that start processes, not marked slow:\n" + "\n".join(unmarked)
