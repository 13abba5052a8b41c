"""The library's layers (README, Architecture): a module imports only from the layers above its own."""

from conftest import REPO

from negflow.dependencies import library_imports

LAYERS = [
    {"errors", "files", "bundle", "layout", "progress"},
    {"refs", "shards", "selection", "negatives", "text_ids", "grades"},
    {"store"},
    {"models", "devices"},
    {"read_pairs", "pair_shapes", "beir", "prepare", "judgments", "embed", "search", "score", "candidates", "export"}
    | {"calibration"}
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
