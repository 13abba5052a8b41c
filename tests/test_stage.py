"""How a stage script runs and what code it depends on, without Snakemake."""

from conftest import REPO

from negflow.stage import script_modules


def test_script_modules_follow_imports_at_any_depth_and_inside_functions(tmp_path):
    package = tmp_path / "negflow"
    package.mkdir()
    (package / "a.py").write_text("from negflow.b import thing\n")
    (package / "b.py").write_text("def f():\n    import negflow.c as c\n    return c\n")
    (package / "c.py").write_text("import os\nfrom negflow import d\n")
    (package / "d.py").write_text("")
    (package / "unused.py").write_text("")
    (tmp_path / "stage.py").write_text("import json\nfrom negflow.a import x\nfrom negflow.nowhere import y\n")
    assert script_modules(tmp_path / "stage.py") == [str(package / f"{m}.py") for m in "abcd"]


def test_every_stage_script_depends_on_the_files_it_runs():
    scripts = sorted((REPO / "scripts").glob("*.py"))
    assert len(scripts) >= 18
    names = {s.stem: {p.split("/")[-1][:-3] for p in script_modules(s)} for s in scripts}
    assert all({"files", "stage", "errors"} <= modules for modules in names.values())
    assert {"embed", "models", "store", "shards"} <= names["embed"]
    assert "models" not in names["export_flag"]  # storage does not drag the model code in
    assert "selection" in names["export_negatives"] and "selection" not in names["embed"]
