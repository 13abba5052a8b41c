"""The `negflow` command: the workflow for people who do not write Snakemake. It writes the config it runs
(so plain `snakemake` repeats the run), runs Snakemake on the workflow shipped with the package, and says
where the files are. Settings are checked by the config schema, the one source of truth."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from negflow import layout
from negflow.bundle import workflow_root
from negflow.config import dataset_settings, did_you_mean, load_schema, setting_defaults, setting_schemas
from negflow.dependencies import RULE_SETTINGS, first_rules
from negflow.errors import ConfigError

DATA_OPTIONS = ("pairs", "corpus", "queries", "qrels")
# Under --out: the run's config file and datasets, from which `negflow report` rebuilds its Snakemake
# command (never a stored command line: a run folder may come from someone else).
LAST_RUN = ".negflow/last-run.json"
# the settings a starter config shows (commented, with the schema's default and description)
STARTER_SETTINGS = (
    "ce",
    "candidates",
    "num_negatives",
    "range_min",
    "range_max",
    "relative_margin",
    "sampling",
    "short_queries",
    "query_prompt",
    "index",
    "candidate_sources",
    "train_formats",
    "audit_qrels",
)


def schema() -> dict:
    return load_schema(workflow_root() / "config" / "schema.yaml")


def option(key: str) -> str:
    return "--" + key.replace("_", "-")


def about(spec: dict) -> str:
    """The first sentence of a setting's description."""
    return re.split(r"\.\s+(?=[A-Z])", " ".join(spec.get("description", "").split()))[0].rstrip(".")


def schema_type(spec: dict) -> str:
    """A setting's type as the schema states it: the values of an enum, else its JSON types."""
    if "enum" in spec:
        return "|".join("null" if value is None else str(value) for value in spec["enum"])
    if "const" in spec:
        return str(spec["const"])
    if "anyOf" in spec:
        return " or ".join(schema_type(part) for part in spec["anyOf"])
    kinds = spec.get("type", "any")
    return " or ".join(kinds) if isinstance(kinds, list) else kinds


def list_settings(spec: dict) -> str:
    """Every setting as its option, with type, default and what it does, grouped by the first rule (in
    pipeline order) whose output it changes; then the settings that change no result."""
    props = spec["$defs"]["dataset"].get("properties", {}) | spec["$defs"]["settings"]["properties"]
    first_rule = first_rules(setting_defaults(spec))
    groups: dict[str, list[str]] = {rule: [] for rule in RULE_SETTINGS}
    for key in props:
        groups.setdefault(first_rule.get(key, ""), []).append(key)
    lines = []
    for rule, keys in groups.items():
        if not keys:
            continue
        title = (
            f"rule {rule}: a change reruns it and what follows"
            if rule
            else "a change reruns nothing (performance, paths, which files are made)"
        )
        lines += ["", title]
        for key in keys:
            default = json.dumps(props[key].get("default"))
            lines.append(f"  {option(key)} ({schema_type(props[key])}, default {default})")
            lines += textwrap.wrap(about(props[key]), 110, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines[1:]) + "\n"


def setting_value(prop: dict, text: str):
    """A command-line value read by its setting's schema: a string setting (or an enum of strings) takes
    the text as given (`"query: "`, `"#x"`), or `null` where none is allowed; a list also as `a,b`; any
    other is read as YAML (numbers, true, null, [a, b], {k: v}), and what does not parse is left as text
    for the schema check to name."""
    types = prop.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if "array" in types and not text.lstrip().startswith("["):  # a list as `a,b`; `run:FILE` is a run file source
        return [
            {"run": local_or_ref(item[len("run:") :])} if item.startswith("run:") else setting_value({}, item)
            for item in text.split(",")
        ]
    enum = prop.get("enum")
    if "string" in types or (enum and all(isinstance(v, str) for v in enum if v is not None)):
        return None if text == "null" and ("null" in types or (enum and None in enum)) else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_settings(tokens: list[str], props: dict[str, dict]) -> tuple[dict, list[str]]:
    """`--key value` / `--key=value` pairs, each value read by its setting's schema (`setting_value`), and
    the other tokens (Snakemake targets)."""
    known = set(props)
    settings, targets, i = {}, [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            targets.append(token)
            i += 1
            continue
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if key not in known:
            raise ConfigError(f"unknown setting {option(key)}{did_you_mean(key, known, option)}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{option(key)} needs a value")
            value, i = tokens[i + 1], i + 1
        settings[key] = setting_value(props[key], value)
        i += 1
    return settings, targets


def local_or_ref(value: str | None) -> str | None:
    """An existing local path made absolute (Snakemake runs in --out), anything else (a hub id) as given."""
    if value is None or not Path(value).exists():
        return value
    return str(Path(value).resolve())


def dataset_name(block: dict) -> str:
    """A dataset name from its pair file (`agnews.jsonl.gz` -> agnews) or its corpus folder."""
    ref = block.get("pairs") or block.get("corpus") or "dataset"
    path = Path(ref.split(":")[0])
    stem = path.parent.name if path.stem in {"corpus", "train", "data"} else path.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).lstrip(".-").rstrip("-") or "dataset"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negflow", description="Mine hard negatives with the negflow workflow.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mine = commands.add_parser(
        "mine",
        help="mine one dataset (or every dataset of a config file)",
        usage="negflow mine (--pairs FILE [--corpus C] | --corpus C --queries Q --qrels R) --model M [--ce M] "
        "[--name N] [--out DIR] [--gpus N] [--cores N] [--profile P] [--verbose] [--KEY VALUE ...] "
        "[-- SNAKEMAKE ARGS]\n"
        "       negflow mine --config FILE [TARGET ...] [--out DIR] [--gpus N] [--cores N] [--profile P] [--verbose]",
        epilog="Any setting of the config schema is accepted as --key value (e.g. --num-negatives 5).",
        allow_abbrev=False,
    )
    data = mine.add_argument_group("data (a pair file, or BEIR files)")
    for key in DATA_OPTIONS:
        data.add_argument(option(key), dest=key, metavar="FILE")
    mine.add_argument("--model", help="embedding model: hub id, folder or package:MODULE/PATH")
    mine.add_argument("--ce", help="cross-encoder to rescore the candidates with")
    mine.add_argument("--config", help="run this config file as it is, instead of the options above")
    run_options(mine)
    mine.add_argument("--name", help="dataset name (default: from the pair file or corpus)")
    mine.add_argument("--verbose", action="store_true", help="Snakemake's own output instead of negflow's progress")
    init = commands.add_parser("init", help="write a commented starter config NAME.yaml", allow_abbrev=False)
    init.add_argument("name")
    for key in DATA_OPTIONS:
        init.add_argument(option(key), dest=key, metavar="FILE")
    init.add_argument("--model")
    init.add_argument("--ce")
    init.add_argument("--out", default=".", help="folder to write NAME.yaml in")
    report = commands.add_parser("report", help="build the HTML report of the last run in --out", allow_abbrev=False)
    report.add_argument("--out", default=".", help="the folder the run wrote into")
    settings = commands.add_parser(
        "settings", help="list every setting (--key value): type, default, what it does", allow_abbrev=False
    )
    for sub in (mine, init, report, settings):
        sub.set_defaults(parser=sub)
    return parser


def run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=".", help="folder for results/, logs/ and the written config")
    parser.add_argument("--cores", default="all", help="CPU cores Snakemake may use (default: all)")
    parser.add_argument("--gpus", type=int, help="GPUs to use at once (one GPU job each)")
    parser.add_argument("--profile", help="a Snakemake workflow profile: a folder, or local / slurm")


def mine_config(args: argparse.Namespace, settings: dict) -> dict:
    """The config of one dataset that a `negflow mine` without --config runs."""
    if args.pairs is None and not (args.corpus and args.queries and args.qrels):
        raise ConfigError("give --pairs FILE, or --corpus, --queries and --qrels")
    if args.model is None:
        raise ConfigError("give --model (a hub id or a folder of a sentence-transformers model)")
    block = {key: local_or_ref(getattr(args, key)) for key in DATA_OPTIONS if getattr(args, key) is not None}
    block["embedding"] = local_or_ref(args.model)
    if args.ce is not None:
        block["ce"] = local_or_ref(args.ce)
    props = setting_schemas(schema(), "dataset")  # every path option is read from where the command was typed
    block |= {k: local_or_ref(v) if props[k].get("x-path") and isinstance(v, str) else v for k, v in settings.items()}
    return {"datasets": {args.name or dataset_name(block): block}}


def snakemake_command(out: Path, configfile: Path, cores="all", gpus=None, profile=None) -> list[str]:
    root = workflow_root()
    command = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--directory", str(out)]
    command += ["--cores", str(cores), f"--configfile={configfile}"]
    if gpus is not None:
        command += ["--resources", f"gpu={gpus}"]
    if profile is not None:
        packaged = root / "profiles" / profile
        command += ["--workflow-profile", str(packaged if packaged.is_dir() else Path(profile).resolve())]
    return command


SHOW = ("progress", "snakemake", None)  # what a run shows: negflow's display, Snakemake's own output, nothing
DRY_RUN = {"-n", "--dry-run", "--dryrun", "--dry_run"}  # Snakemake's options that only plan


def run_workflow(
    config: dict,
    out: Path,
    configfile: Path | None = None,
    targets=(),
    extra=(),
    show: str | None = "progress",
    **machine,
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Validate `config` by the schema, write it under `out` (unless it is `configfile` already), run
    Snakemake there (`machine`: cores, gpus, profile) and record the run for `negflow report`. `show`:
    negflow's display of the jobs (`display`, through the logger plugin `negflow`), Snakemake's own
    output, or nothing (captured in the returned run). Returns the run and its dataset names."""
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(out):  # relative paths in a config are read from the run folder, as Snakemake reads them
        names = list(dataset_settings(config, schema(), workflow_root() / "config" / "datasets"))
    if configfile is None:
        configfile = out / f"negflow-{names[0] if len(names) == 1 else 'run'}.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = snakemake_command(out, configfile, **machine)
    (out / LAST_RUN).parent.mkdir(exist_ok=True)
    record = {"configfile": str(configfile), "datasets": names}
    (out / LAST_RUN).write_text(json.dumps(record, indent=1), encoding="utf-8")
    if show is not None:
        print(f"negflow: config {configfile}; plain Snakemake repeats the run:")
        print(f"  {shlex.join(['snakemake', *command[3:]])}", flush=True)
    return run_snakemake([*command, *targets, *extra], show), names


def run_snakemake(command: list[str], show: str | None) -> subprocess.CompletedProcess:
    """Run Snakemake as `show` says, on this process's stdout and stderr. Where those are not files (a
    notebook), its output passes through this process's stdout, line by line, which a notebook shows."""
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, got {show!r}")
    if show is None:
        return subprocess.run(command, capture_output=True, text=True)
    if show == "progress":
        command = [*command, "--logger=negflow"]
    try:
        sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        pass
    else:
        return subprocess.run(command)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        try:
            for line in run.stdout:
                print(line, end="", flush=True)
        except KeyboardInterrupt:  # a notebook interrupts this process alone: stop Snakemake with it
            run.send_signal(signal.SIGINT)
            run.wait()
            raise
    return subprocess.CompletedProcess(command, run.returncode)


def summary(out: Path, name: str) -> str:
    """One line: queries, negatives, queries short, and what each filter dropped."""
    path = out / layout.run_file(layout.export_negatives.report, name)
    if not path.is_file():
        return f"{name}: no selection.json (the run did not reach export_negatives)"
    report = json.loads(path.read_text(encoding="utf-8"))
    counts = report["counts"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in report["dropped"].items() if v) or "nothing"
    negatives = out / layout.run_file(layout.export_negatives.negatives, name)
    chosen = f"; selection {report['calibration']['summary']}" if "calibration" in report else ""
    return (
        f"{name}: {counts['queries_written']:,} queries, {counts['negatives']:,} negatives, "
        f"{counts['queries_short']:,} queries short; dropped: {dropped}{chosen} -> {negatives}"
    )


def mine(args: argparse.Namespace, tokens: list[str], extra: list[str]) -> int:
    settings, targets = parse_settings(tokens, setting_schemas(schema(), "dataset"))
    out = Path(args.out).resolve()
    configfile = None
    if args.config is not None:
        given = [option(k) for k in (*DATA_OPTIONS, "model", "ce", "name") if getattr(args, k) is not None]
        if given or settings:
            raise ConfigError(f"--config runs the file as it is; put {', '.join(given or settings)} in it instead")
        configfile = Path(args.config).resolve()
        config = yaml.safe_load(configfile.read_text(encoding="utf-8")) or {}
    elif targets:
        raise ConfigError(f"targets ({targets[0]}) go with --config; without it negflow mines one dataset")
    else:
        config = mine_config(args, settings)
    machine = {"cores": args.cores, "gpus": args.gpus, "profile": args.profile}
    show = "snakemake" if args.verbose else "progress"
    run, names = run_workflow(config, out, configfile, targets, extra, show, **machine)
    if run.returncode == 0 and not DRY_RUN.intersection(extra):
        for name in names:
            print(summary(out, name))
    return run.returncode


def starter_config(name: str, args: argparse.Namespace, spec: dict) -> str:
    """NAME.yaml: the data and model (given, or placeholders to fill in) and the settings users change
    first, commented out at their defaults with the schema's description."""
    props = setting_schemas(spec, "dataset")
    lines = [
        f"# negflow config for {name}. Mine with:  negflow mine --config {name}.yaml",
        "# Every key of config/schema.yaml may go in the dataset block; unknown keys are refused.",
        "datasets:",
        f"  {name}:",
    ]
    if args.pairs or not args.corpus:
        lines += ["    # (query, positive) pairs: JSONL (.gz), Parquet, or a hub dataset id[:split]"]
        lines += [f"    pairs: {local_or_ref(args.pairs) or 'path/to/pairs.jsonl.gz'}"]
        lines += ["    # or BEIR files instead of pairs: corpus, queries, qrels"] if not args.pairs else []
    else:
        lines += [f"    {key}: {local_or_ref(getattr(args, key)) or 'path/to/' + key}" for key in DATA_OPTIONS[1:]]
    lines += [f"    embedding: {local_or_ref(args.model) or props['embedding']['default']}"]
    if args.ce:
        lines += [f"    ce: {local_or_ref(args.ce)}"]
    for key in STARTER_SETTINGS:
        if key == "ce" and args.ce:
            continue
        default = json.dumps(props[key].get("default"))
        lines += [f"    # {key}: {default}  # {about(props[key])}"]
    return "\n".join(lines) + "\n"


def init(args: argparse.Namespace) -> int:
    path = Path(args.out) / f"{args.name}.yaml"
    if not layout.is_dataset_name(args.name):
        raise ConfigError(f"{layout.DATASET_NAME_RULE} (got '{args.name}')")
    if path.exists():
        raise ConfigError(f"{path} exists; remove it or pick another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_config(args.name, args, schema()), encoding="utf-8")
    print(f"negflow: wrote {path}; fill in the data, then: negflow mine --config {path}")
    return 0


def last_run_config(out: Path) -> Path:
    """The config file of the last `negflow mine` in `out`, from its record (checked: a run folder may be
    someone else's, and what it holds is data, never a command)."""
    record_path = out / LAST_RUN
    if not record_path.is_file():
        raise ConfigError(f"no negflow run in {out} (run `negflow mine --out {out}` first)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        configfile = Path(record["configfile"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{record_path}: not a run record of this negflow (run `negflow mine` again)") from None
    if not configfile.is_file():
        raise ConfigError(f"{record_path}: its config file {configfile} is gone (run `negflow mine` again)")
    return configfile


def report(args: argparse.Namespace) -> int:
    """Snakemake's report of the last run in --out: this package's workflow on the run's config file."""
    out = Path(args.out).resolve()
    command = snakemake_command(out, last_run_config(out))
    html = out / "report.html"
    status = subprocess.run([*command, f"--report={html}"]).returncode
    if status == 0:
        print(f"negflow: report {html}")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args, tokens = parser.parse_known_args(argv)
    if args.command != "mine" and tokens:
        args.parser.error(f"unrecognized arguments: {' '.join(tokens)}")
    try:
        if args.command == "mine":
            return mine(args, tokens, extra)
        if args.command == "settings":
            print(list_settings(schema()), end="")
            return 0
        return init(args) if args.command == "init" else report(args)
    except ConfigError as e:
        args.parser.error(str(e).removeprefix("config: "))


if __name__ == "__main__":
    sys.exit(main())
