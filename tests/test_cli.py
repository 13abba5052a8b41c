"""The `negflow` command: argument errors before any run, the starter config, a BEIR run through `init` and
`mine --config`, and a wheel installed into a fresh environment mining a pair file from another folder."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, read_jsonl

from negflow import cli
from negflow.bundle import copy_workflow
from negflow.config import dataset_settings, load_schema, setting_schemas

# what the tiny random-init models need (see conftest.dataset_block): fp32, no doc-doc filters
TINY = ["--embedding-dtype", "fp32", "--relative-margin", "0", "--positive-doc-margin", "null"]
TINY += ["--dup-threshold", "null", "--num-negatives", "2", "--train-formats", "[n-tuple]"]


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory, fixture_data):
    """The fixture's positives as ["anchor", "positive"] lines."""
    text = {d["_id"]: d["text"] for d in read_jsonl(fixture_data["corpus"])}
    query_text = {q["_id"]: q["text"] for q in read_jsonl(fixture_data["queries"])}
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    path = tmp_path_factory.mktemp("cli") / "fx-pairs.jsonl"
    path.write_text("".join(json.dumps([query_text[q], text[d]]) + "\n" for q, d, s in qrels if int(s) >= 1))
    return path


def fails(capsys, *argv) -> str:
    """Run the command, expect argparse's exit status 2, return its one-line error after the usage."""
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: negflow")
    return err.strip().splitlines()[-1]


def test_argument_errors_name_the_option_before_any_run(capsys, tmp_path, pair_file, tiny_models):
    model = str(tiny_models["embedder"])
    base = ["mine", "--pairs", str(pair_file), "--model", model, "--out", str(tmp_path)]
    assert fails(capsys, *base, "--relative-margn", "0.1").endswith(
        "unknown setting --relative-margn (did you mean '--relative-margin'?)"
    )
    assert fails(capsys, *base, "--num-negatives", "many").endswith(
        "datasets.fx-pairs.num_negatives: 'many' is not of type 'integer'"
    )
    assert fails(capsys, "mine", "--pairs", str(pair_file)).endswith(
        "give --model (a hub id or a folder of a sentence-transformers model)"
    )
    assert fails(capsys, "mine", "--model", model).endswith("give --pairs FILE, or --corpus, --queries and --qrels")
    assert "--config runs the file as it is; put --pairs in it instead" in fails(
        capsys, "mine", "--config", "x.yaml", "--pairs", str(pair_file)
    )
    assert fails(capsys, *base, "--num-negatives").endswith("--num-negatives needs a value")
    assert fails(capsys, "mine", "--bogus-flag=1", "--model", model).endswith("unknown setting --bogus-flag")
    assert fails(capsys, "report", "--out", str(tmp_path)).endswith(
        f"no negflow run in {tmp_path} (run `negflow mine --out {tmp_path}` first)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing run


def test_settings_are_read_by_their_schema_type_and_names_from_the_data():
    props = setting_schemas(load_schema(REPO / "config/schema.yaml"), "dataset")
    settings, targets = cli.parse_settings(
        [
            "--train-formats",
            "[n-tuple, flag]",
            "--positive-doc-margin=null",
            "results/x/negatives.jsonl",
            "--seed",
            "7",
            "--query-prompt",
            "query: ",  # the E5 prefix: YAML refuses it
            "--doc-prompt=#x",  # YAML reads a comment: null
            "--query-prompt-name",
            "null",
            "--embedding-batch-tokens",
            "4096",
            "--ce-batch-tokens=auto",
            "--sampling",
            "on",  # YAML 1.1 reads a boolean; an enum of strings takes the text (and the schema refuses it)
            "--max-pairs",
            "[1",  # not YAML: left as text for the schema check to name
        ],
        props,
    )
    assert settings == {
        "train_formats": ["n-tuple", "flag"],
        "positive_doc_margin": None,
        "seed": 7,
        "query_prompt": "query: ",
        "doc_prompt": "#x",
        "query_prompt_name": None,
        "embedding_batch_tokens": 4096,
        "ce_batch_tokens": "auto",
        "sampling": "on",
        "max_pairs": "[1",
    }
    assert targets == ["results/x/negatives.jsonl"]
    assert cli.dataset_name({"pairs": "/data/st/agnews.jsonl.gz"}) == "agnews"
    assert cli.dataset_name({"corpus": "/data/beir/scifact/corpus.jsonl"}) == "scifact"
    assert cli.dataset_name({"pairs": "sentence-transformers/gooaq:train"}) == "gooaq"


def test_a_list_setting_takes_commas_and_a_run_file_source_its_absolute_path(tmp_path, monkeypatch):
    props = setting_schemas(load_schema(REPO / "config/schema.yaml"), "dataset")
    monkeypatch.chdir(tmp_path)
    Path("mine.trec").write_text("q Q0 d 1 1.0 t\n")
    settings, _ = cli.parse_settings(
        ["--candidate-sources", "dense,bm25,run:mine.trec", "--train-formats=flag,n-tuple"], props
    )
    assert settings == {
        "candidate_sources": ["dense", "bm25", {"run": str(tmp_path / "mine.trec")}],
        "train_formats": ["flag", "n-tuple"],
    }


def test_the_snakemake_command_sizes_the_run(tmp_path):
    command = cli.snakemake_command(tmp_path, tmp_path / "c.yaml", cores=4, gpus=2, profile="slurm")
    assert command[:3] == [sys.executable, "-m", "snakemake"]
    assert command[command.index("--resources") + 1] == "gpu=2" and command[command.index("--cores") + 1] == "4"
    assert command[command.index("--workflow-profile") + 1] == str(REPO / "profiles" / "slurm")
    assert f"--configfile={tmp_path / 'c.yaml'}" in command and command[command.index("-s") + 1] == str(
        REPO / "Snakefile"
    )
    mine = cli.snakemake_command(tmp_path, tmp_path / "c.yaml", profile=str(tmp_path / "site"))
    assert mine[mine.index("--workflow-profile") + 1] == str(tmp_path / "site") and "--resources" not in mine


def test_init_writes_a_starter_config_the_schema_accepts(tmp_path, capsys, pair_file, tiny_models):
    assert (
        cli.main(
            [
                "init",
                "agnews",
                "--pairs",
                str(pair_file),
                "--model",
                str(tiny_models["embedder"]),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    text = (tmp_path / "agnews.yaml").read_text()
    assert "    # num_negatives: 8  # Negatives selected per query\n" in text and "# sampling: " in text
    assert "negflow mine --config agnews.yaml" in text
    config = yaml.safe_load(text)
    assert config["datasets"]["agnews"] == {"pairs": str(pair_file), "embedding": str(tiny_models["embedder"])}
    schema = load_schema(REPO / "config" / "schema.yaml")
    assert list(dataset_settings(config, schema, None)) == ["agnews"]
    assert fails(capsys, "init", "agnews", "--out", str(tmp_path)).endswith(
        "agnews.yaml exists; remove it or pick another name"
    )
    placeholder = yaml.safe_load(cli.starter_config("x", cli.build_parser().parse_args(["init", "x"]), schema))
    assert placeholder["datasets"]["x"]["pairs"] == "path/to/pairs.jsonl.gz"


def negflow(*args: str, cwd: Path, fresh: Path | None = None) -> subprocess.CompletedProcess:
    """The command: this checkout's (`python -m negflow.cli`), or the console script a `fresh` environment
    installed from the wheel, which must not see the checkout."""
    env = run_env(fresh)
    command = [str(fresh / "bin" / "negflow")] if fresh else [sys.executable, "-m", "negflow.cli"]
    proc = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_env(fresh: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    return env if fresh else env | {"PYTHONPATH": str(REPO / "scripts")}


def plain_rerun(proc: subprocess.CompletedProcess, cwd: Path, fresh: Path | None = None) -> str:
    """The `snakemake ...` line the command printed, run again: what it reports."""
    line = next(line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("snakemake -s "))
    python = str(fresh / "bin" / "python") if fresh else sys.executable
    command = [python, "-m", *shlex.split(line)]
    rerun = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=run_env(fresh))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return rerun.stdout + rerun.stderr


def test_settings_lists_every_setting_once_by_the_rule_it_reruns(capsys):
    spec = load_schema(REPO / "config" / "schema.yaml")
    assert cli.main(["settings"]) == 0
    listing = capsys.readouterr().out
    keys = spec["$defs"]["settings"]["properties"] | spec["$defs"]["dataset"]["properties"]
    options = re.findall(r"^  (--[a-z0-9-]+) \(", listing, re.M)
    assert sorted(options) == sorted(cli.option(key) for key in keys)
    assert "  --num-negatives (integer, default 8)\n      Negatives selected per query" in listing
    assert '  --sampling (top|random|simans, default "random")' in listing
    assert "  --relative-margin (number or null, default 0.05)" in listing
    titles = re.findall(r"^rule (\w+):", listing, re.M)
    assert titles[:3] == ["read_pairs", "prepare", "prepare_judgments"] and "export_negatives" in titles
    embed_batch = listing.index("--embedding-batch-size")
    assert listing.rindex("a change reruns nothing", 0, embed_batch) > listing.rindex("rule ", 0, embed_batch)


@pytest.mark.slow
def test_beir_files_through_init_and_mine_config(tmp_path, fixture_data, tiny_models):
    files = [f"--{k}={fixture_data[k]}" for k in ("corpus", "queries", "qrels")]
    negflow("init", "fxbeir", *files, f"--model={tiny_models['embedder']}", cwd=tmp_path)
    config = yaml.safe_load((tmp_path / "fxbeir.yaml").read_text())
    block = config["datasets"]["fxbeir"]
    block |= {"embedding_dtype": "fp32", "relative_margin": 0.0, "positive_doc_margin": None, "dup_threshold": None}
    block |= {"num_negatives": 2, "train_formats": ["n-tuple"]}
    (tmp_path / "fxbeir.yaml").write_text(yaml.safe_dump(config))
    proc = negflow("mine", "--config", "fxbeir.yaml", "--out", "run", "--cores", "2", cwd=tmp_path)
    summary = re.search(
        r"^fxbeir: (\d+) queries, (\d+) negatives, (\d+) queries short; dropped: .* -> (.*)$", proc.stdout, re.M
    )
    records = read_jsonl(Path(summary.group(4)))
    assert int(summary.group(1)) == len(records) > 0
    assert int(summary.group(2)) == sum(r["doc_scores"].count(0.0) for r in records) > 0
    assert (tmp_path / "run/results/fxbeir/train/n-tuple.parquet").is_file()
    assert "Nothing to be done" in plain_rerun(proc, tmp_path)
    record = json.loads((tmp_path / "run" / cli.LAST_RUN).read_text())
    assert record == {"configfile": str(tmp_path / "fxbeir.yaml"), "datasets": ["fxbeir"]}
    report = negflow("report", "--out", "run", cwd=tmp_path)
    assert (tmp_path / "run/report.html").stat().st_size > 10_000 and "negflow: report" in report.stdout


@pytest.mark.slow
def test_a_built_wheel_mines_a_pair_file_from_another_folder(tmp_path, pair_file, fixture_data, tiny_models):
    """The wheel carries the workflow: installed (not editable) into a fresh environment that sees the
    dependencies but not the checkout, `negflow mine` runs from an unrelated folder, and the config it wrote
    reruns with plain Snakemake to nothing to do."""
    source = copy_workflow(REPO, tmp_path / "source", with_library=True)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    fresh = tmp_path / "fresh"
    env = run_env(fresh)
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, env=env)
    python = str(fresh / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, env=env
    )
    # the dependencies as a plain path: its .pth files (the editable negflow) stay unread
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site.stdout.strip(), "deps.pth").write_text(deps + "\n")
    wheel = next(wheels.glob("negflow-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    where = subprocess.run(
        [python, "-c", "import negflow.bundle as b; print(b.workflow_root())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.strip().startswith(str(fresh)), where.stdout + where.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = negflow(
        "mine",
        "--pairs",
        str(pair_file),
        "--corpus",
        str(fixture_data["corpus"]),
        "--model",
        str(tiny_models["embedder"]),
        "--cores",
        "2",
        *TINY,
        cwd=elsewhere,
        fresh=fresh,
    )
    assert re.search(r"^fx-pairs: \d+ queries, [1-9]\d* negatives", proc.stdout, re.M), proc.stdout
    assert (elsewhere / "results/fx-pairs/negatives.jsonl").is_file() and (
        elsewhere / "negflow-fx-pairs.yaml"
    ).is_file()
    assert "Nothing to be done" in plain_rerun(proc, elsewhere, fresh)


def test_summary_names_the_setting_selection_auto_chose(tmp_path):
    counts = {"queries_written": 40, "negatives": 300, "queries_short": 3}
    report = {"counts": counts, "dropped": {"window": 12, "relative_margin": 0}}
    path = tmp_path / "results/fx/selection.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    fixed = cli.summary(tmp_path, "fx")
    assert fixed == (
        f"fx: 40 queries, 300 negatives, 3 queries short; dropped: window 12 -> {tmp_path}/results/fx/negatives.jsonl"
    )
    chose = "auto chose top relative_margin=None positive_doc_margin=0.3 range_min=30: estimated false negatives 6.5%"
    path.write_text(json.dumps(report | {"calibration": {"summary": chose}}))
    assert cli.summary(tmp_path, "fx") == fixed.replace("window 12 ->", f"window 12; selection {chose} ->")


def test_report_rebuilds_its_command_from_the_recorded_config_never_a_stored_command(tmp_path):
    record = tmp_path / cli.LAST_RUN
    record.parent.mkdir()
    marker = tmp_path / "ran"
    record.write_text(
        json.dumps({"snakemake": ["touch", str(marker)], "datasets": ["fx"]})
    )  # an older or planted record
    with pytest.raises(cli.ConfigError, match="last-run.json: not a run record of this negflow"):
        cli.last_run_config(tmp_path)
    record.write_text(json.dumps({"configfile": str(tmp_path / "gone.yaml"), "snakemake": ["touch", str(marker)]}))
    with pytest.raises(cli.ConfigError, match="its config file .*gone.yaml is gone"):
        cli.last_run_config(tmp_path)
    (tmp_path / "run.yaml").write_text("datasets: {}\n")
    record.write_text(json.dumps({"configfile": str(tmp_path / "run.yaml"), "snakemake": ["touch", str(marker)]}))
    assert cli.last_run_config(tmp_path) == tmp_path / "run.yaml"
    assert not marker.exists()
    with pytest.raises(cli.ConfigError, match="no negflow run in"):
        cli.last_run_config(tmp_path / "elsewhere")


def test_every_path_option_is_read_from_where_the_command_was_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("pairs.jsonl", "judged.tsv", "eval.tsv"):
        (tmp_path / name).write_text("")
    (tmp_path / "data").mkdir()
    argv = ["mine", "--pairs", "pairs.jsonl", "--model", "org/model", "--out", "run"]
    args, tokens = cli.build_parser().parse_known_args(argv)
    props = setting_schemas(load_schema(REPO / "config/schema.yaml"), "dataset")
    tokens += ["--audit-qrels", "judged.tsv", "--finetune-eval-qrels=eval.tsv", "--data-root", "data"]
    tokens += ["--query-prompt", "data"]  # not a path setting, though a folder of that name exists
    settings, _ = cli.parse_settings(tokens, props)
    block = cli.mine_config(args, settings)["datasets"]["pairs"]
    assert block["pairs"] == str(tmp_path / "pairs.jsonl")
    assert block["audit_qrels"] == str(tmp_path / "judged.tsv")
    assert block["finetune_eval_qrels"] == str(tmp_path / "eval.tsv")
    assert block["data_root"] == str(tmp_path / "data")
    assert (block["embedding"], block["query_prompt"]) == ("org/model", "data")  # a hub id and a text, as given
