"""Every output path is spelled once, in `layout`: the rules declare their outputs from it, and each entry
is a rule's."""

import re
from types import SimpleNamespace

from conftest import REPO, rule_bodies

from negflow import layout

ENTRIES = {name: files for name, files in vars(layout).items() if isinstance(files, SimpleNamespace)}


def test_each_rule_writing_results_declares_every_output_from_its_layout_entry():
    bodies = rule_bodies()
    assert set(ENTRIES) <= set(bodies)
    for rule, files in ENTRIES.items():
        output = bodies[rule].split("    output:\n", 1)[1].split("\n    log:", 1)[0]
        declared = re.findall(r"^        (\w+)=", output, re.M)
        assert declared == list(vars(files)), rule
        assert all(f"layout.{rule}.{name}" in output for name in vars(files)), rule
    assert not [path.name for path in (REPO / "rules").glob("*.smk") if "results/" in path.read_text()]


def test_paths_are_under_the_dataset_results_folder_and_distinct():
    paths = [path for files in ENTRIES.values() for path in vars(files).values()]
    assert all(path.startswith("results/{dataset}/") for path in paths)
    assert len(set(paths)) == len(paths)
    assert layout.run_file(layout.export_sentence_transformers.data, "msmarco", format="triplet") == (
        "results/msmarco/train/triplet.parquet"
    )
