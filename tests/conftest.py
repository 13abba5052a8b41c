"""Shared fixtures: tiny random-init models saved to disk, a small real-text BEIR set, a Snakemake runner."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

SHARED_DATASETS = Path(os.environ.get("NEGFLOW_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The slowest test files (a minute or more of Snakemake runs each) in the order `make test` hands them out,
# before the rest, so the two workers end together instead of one running the last long file alone.
SLOWEST_FIRST = [
    "test_workflow",
    "test_slurm",
    "test_faults",
    "test_real_model",
    "test_rounds",
    "test_pairs_workflow",
    "test_sources_workflow",
    "test_dropin",
    "test_calibration",
    "test_display",
    "test_cli",
]


# Files whose tests share no module-scoped fixture: each of their tests is a work unit of its own under
# `make test`, the rest go to a worker a file at a time (FileScheduling).
SPLIT_BY_TEST = {"test_benches.py", "test_slurm.py", "test_sources_workflow.py", "test_bad_input.py"}


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = [d.argname for chain in (fixtures.name2fixturedefs.values() if fixtures else ()) for d in chain]
        shared = [
            name for name in shared if fixtures.name2fixturedefs[name][-1].scope in ("module", "class", "package")
        ]
        if Path(item.path).name in SPLIT_BY_TEST and shared:
            raise pytest.UsageError(f"{item.nodeid} uses module-scoped {shared}: take its file out of SPLIT_BY_TEST")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: `-p no:xdist` would refuse it as unknown
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, except that the tests of SPLIT_BY_TEST files are handed out one by one. pytest-xdist's
    own `loadgroup` would do this by marks, but its renaming of node ids has no effect under pytest 9.2 (it sets
    `item._nodeid`, which pytest no longer reads), so it handed out every test alone: the tests of a file with
    a module-scoped Snakemake run went to both workers, and each built the run (test_real_model's and
    test_pairs_workflow's, 200 s of the suite's 2,800 worker-seconds)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPLIT_BY_TEST else path

    return FileScheduling(config, log)


def _tokenizer_dir(path: Path, texts: list[str]) -> None:
    """A real WordPiece tokenizer whose vocabulary covers the fixture text."""
    from transformers import BertTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(specials + list("abcdefghijklmnopqrstuvwxyz0123456789") + words[:2000]) + "\n")
    BertTokenizerFast(vocab=str(vocab), do_lower_case=True).save_pretrained(str(path))


def _bert_config(vocab_size: int, num_labels: int = 1):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> dict[str, Path]:
    """A small BEIR set from standard-library docstrings, with a multi-positive query, a judged
    non-relevant row and a query without positives added so their handling is exercised."""
    from negflow.demo import build_docstring_dataset, write_beir

    root = tmp_path_factory.mktemp("data")
    data = build_docstring_dataset(max_docs=120, query_every=4)
    first_q, first_doc, _ = data["qrels"][0]
    extra_docs = [d["_id"] for d in data["corpus"][-2:]]
    data["qrels"] += [(first_q, extra_docs[0], 2), (first_q, extra_docs[1], 0)]
    data["queries"].append({"_id": "q-unjudged", "text": "A query nobody judged."})
    paths = {k: root / f for k, f in (("corpus", "corpus.jsonl"), ("queries", "queries.jsonl"), ("qrels", "qrels.tsv"))}
    write_beir(data, str(paths["corpus"]), str(paths["queries"]), str(paths["qrels"]))
    paths["root"] = root
    return paths


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, fixture_data) -> dict[str, Path]:
    """A random-init BERT sentence-transformers model and a 1-label CrossEncoder, saved to disk."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer, models
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    texts = [json.loads(line)["text"] for line in fixture_data["corpus"].read_text().splitlines()]
    tok_dir = root / "tokenizer"
    _tokenizer_dir(tok_dir, texts)
    vocab_size = len((tok_dir / "vocab.txt").read_text().splitlines())

    bert_dir = root / "bert"
    BertModel(_bert_config(vocab_size)).save_pretrained(str(bert_dir))
    for f in tok_dir.iterdir():
        (bert_dir / f.name).write_bytes(f.read_bytes())
    transformer = models.Transformer(str(bert_dir), max_seq_length=96)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    embedder = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    embed_dir = root / "embedder"
    embedder.save(str(embed_dir))

    ce_hf = root / "ce-hf"
    BertForSequenceClassification(_bert_config(vocab_size, num_labels=1)).save_pretrained(str(ce_hf))
    for f in tok_dir.iterdir():
        (ce_hf / f.name).write_bytes(f.read_bytes())
    ce_dir = root / "cross-encoder"
    CrossEncoder(str(ce_hf), device="cpu", max_length=128).save(str(ce_dir))
    return {"embedder": embed_dir, "ce": ce_dir}


STAGED_SEARCH = {"candidates": 10, "index": "flat", "device": "cpu"}  # the `staged` search


@pytest.fixture(scope="session")
def staged(tmp_path_factory, fixture_data, tiny_models):
    """Run prepare, embed (in 2 shards), search, prepare_ce_pairs and score_pairs once for the session."""
    from negflow.embed import embed_shard
    from negflow.models import BatchLimits
    from negflow.prepare import prepare
    from negflow.score import prepare_ce_pairs, score_pairs
    from negflow.search import compute_qrels_cosines, merge_candidates, search_shard

    out = tmp_path_factory.mktemp("stages")
    prepare(
        str(fixture_data["corpus"]),
        str(fixture_data["queries"]),
        str(fixture_data["qrels"]),
        str(tiny_models["embedder"]),
        "query: ",
        None,
        64,
        1,
        True,
        3,
        str(out / "corpus"),
        str(out / "queries"),
        str(out / "qrels"),
        str(out / "holdout.parquet"),
        str(out / "manifest.json"),
    )
    paths = {"corpus": [], "queries": []}
    for shard in ("1-of-2", "2-of-2"):  # both parts in one call, as the embed rule does
        outputs = [(str(out / part), str(out / f"{part}-{shard}.npy")) for part in paths]
        written = embed_shard(
            outputs,
            shard,
            str(tiny_models["embedder"]),
            64,
            "fp32",
            "cpu",
            BatchLimits(7),
            prepared_manifest=str(out / "manifest.json"),
        )
        assert list(written) == [path for _, path in outputs]
        for part, (_, path) in zip(paths, outputs, strict=True):
            paths[part].append(path)
    search_shard(
        paths["corpus"],
        paths["queries"],
        *(str(out / p) for p in ("corpus", "queries", "qrels")),
        STAGED_SEARCH,
        5,
        str(out / "candidates-1-of-1.parquet"),
    )
    merge_candidates([str(out / "candidates-1-of-1.parquet")], str(out / "candidates.parquet"))
    compute_qrels_cosines(
        paths["corpus"], paths["queries"], str(out / "queries"), str(out / "qrels"), str(out / "qrels.parquet")
    )
    prepare_ce_pairs(
        str(out / "candidates.parquet"),
        str(out / "qrels.parquet"),
        str(out / "corpus"),
        str(out / "queries"),
        str(tiny_models["ce"]),
        100,
        str(out / "pairs"),
    )
    score_pairs(
        str(out / "pairs"), str(tiny_models["ce"]), 100, "fp32", "cpu", BatchLimits(9), str(out / "pair_scores.parquet")
    )
    return out, paths


def staged_candidates(out, paths, scores=True, selection_score="auto"):
    """The candidates of the `staged` run, as export and audit read them: from their rule's inputs."""
    from negflow.candidates import Candidates

    inputs = {
        "candidates": str(out / "candidates.parquet"),
        "qrels": str(out / "qrels.parquet"),
        "corpus": paths["corpus"],
        "queries": paths["queries"],
        "corpus_dir": str(out / "corpus"),
    }
    if scores:
        inputs["scores"] = str(out / "pair_scores.parquet")
    return Candidates.from_inputs(inputs, {"selection_score": selection_score})


def write_config(workdir: Path, datasets: dict, **top) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({**top, "datasets": datasets}))
    return path


def rule_bodies() -> dict[str, str]:
    """Each rule of rules/*.smk, by name, with the text of its body."""
    bodies = {}
    for smk in (REPO / "rules").glob("*.smk"):
        bodies |= dict(re.findall(r"(?ms)^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text()))
    return bodies


def gpu_rules() -> set[str]:
    """The rules that declare the `gpu` resource."""
    return {rule for rule, body in rule_bodies().items() if re.search(r"^\s+gpu\s*=", body, re.M)}


def copy_workflow(workdir: Path) -> Path:
    """A copy of the workflow inside `workdir` (`workdir/workflow`), which snakemake_cmd then runs: a test
    may edit its code without touching the checkout."""
    from negflow.bundle import copy_workflow as copy

    return copy(REPO, workdir / "workflow", with_library=True)


def snakemake_cmd(workdir: Path, *args: str, launcher: tuple[str, ...] = ("-m", "snakemake")) -> list[str]:
    """The command that runs the workflow in `workdir` with the workdir's config.yaml: the repository's,
    or the workdir's own copy (copy_workflow). The `=` keeps Snakemake's multi-file --configfile option
    from swallowing targets given after it. `launcher`: what Python runs instead of `-m snakemake`."""
    own = workdir / "workflow" / "Snakefile"
    return [
        sys.executable,
        *launcher,
        "-s",
        str(own if own.exists() else REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        f"--configfile={workdir / 'config.yaml'}",
        *args,
    ]


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    env: dict | None = None,
    timeout: float | None = None,
    launcher: tuple[str, ...] = ("-m", "snakemake"),
) -> subprocess.CompletedProcess:
    """Run the workflow (see snakemake_cmd) and fail with its output's tail unless `check` is off."""
    cmd = snakemake_cmd(workdir, *args, launcher=launcher)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table (empty when nothing is to be done)."""
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal", proc.stdout + proc.stderr, re.S)
    if not match:
        return {}
    return {name: int(n) for name, n in (line.split() for line in match[1].strip().splitlines())}


@pytest.fixture
def own_groups():
    """The process groups a test starts, killed when it ends and when pytest gets SIGTERM (a `timeout`, CI):
    a group of its own is beyond the signal that stops pytest, and a hung run would go on."""
    groups: set[int] = set()

    def kill_groups(signum, _frame):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        signal.signal(signum, previous)
        signal.raise_signal(signum)

    previous = signal.signal(signal.SIGTERM, kill_groups)
    try:
        yield groups
    finally:
        signal.signal(signal.SIGTERM, previous)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


# What a selection change reruns in the fx run (five training files, the report and the audit).
SELECTION_JOBS = {
    "export_negatives": 1,
    "export_flag": 1,
    "export_sentence_transformers": 4,
    "plot_report": 1,
    "audit": 1,
    "all": 1,
}


def fused_in_one_piece(results: Path, out: Path, candidates: int, others: dict[str, str] | None = None) -> Path:
    """What the library fuses from a run's dense table and BM25 searched in one piece (plus `others`, name:
    table): the reference a sharded or SLURM run's fused table must equal; the fused table's path."""
    from negflow.bm25 import search_bm25
    from negflow.config import load_schema, setting_defaults
    from negflow.sources import fuse_candidates

    dirs = [str(results / "prepare" / p) for p in ("queries", "corpus", "qrels")]
    defaults = setting_defaults(load_schema(REPO / "config" / "schema.yaml"))
    search_bm25(str(results / "bm25" / "index"), *dirs, defaults, candidates, str(out / "bm25.parquet"))
    tables = {"dense": str(results / "search" / "candidates.parquet"), "bm25": str(out / "bm25.parquet")}
    embeddings = {p: sorted(str(f) for f in (results / "embed" / p).glob("*.npy")) for p in ("corpus", "queries")}
    prepared = [str(results / "prepare" / p) for p in ("corpus", "queries")]
    fuse_candidates(
        tables | (others or {}), embeddings["corpus"], embeddings["queries"], *prepared, str(out / "f.parquet")
    )
    return out / "f.parquet"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def dataset_block(fixture_data, tiny_models):
    """The fixture dataset's config block for end-to-end runs."""
    return {
        "corpus": str(fixture_data["corpus"]),
        "queries": str(fixture_data["queries"]),
        "qrels": str(fixture_data["qrels"]),
        "embedding": str(tiny_models["embedder"]),
        # fp32: the tests compare sharded runs with one-shard runs, equal to float32 rounding; bf16 (auto on
        # CPUs with native bf16) rounds a shard's other batch shapes to ~1e-3, enough to reorder these
        # random-init cosines (test_real_model runs the default dtype end to end)
        "embedding_dtype": "fp32",
        "ce_dtype": "fp32",
        "candidates": 100,
        "num_negatives": 4,
        # random-init cosines cluster near 0.97: drop only what beats the positive; the doc-doc filters
        # (tuned for real models) would drop nearly everything
        "relative_margin": 0.0,
        "positive_doc_margin": None,
        "dup_threshold": None,
        "train_formats": ["flag", "triplet", "n-tuple", "labeled-pair", "labeled-list"],
        "audit_qrels": str(fixture_data["qrels"]),
    }


@pytest.fixture(scope="session")
def local_ce_run(tmp_path_factory, dataset_block, tiny_models):
    """A plain local run with a cross-encoder, one shard per stage: the reference that sharded, multi-GPU
    and SLURM runs must reproduce."""
    workdir = tmp_path_factory.mktemp("local-ce")
    write_config(workdir, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    snakemake(workdir)
    return workdir


TIE = 1e-5  # score gap within which two runs' float rounding may order documents either way


def assert_same_negatives(path: Path, reference: Path) -> None:
    """Same queries, positives and negatives, except where a tie explains a difference. Sharded model
    passes run other batch shapes (about 1e-6, see test_stages, where the merged tables are compared
    exactly), and the fixture's random-init models put many documents within that of each other, so a
    document may flip at a decision boundary: in or out of the candidates (its cosine within TIE of the
    query's last candidate's), or kept or dropped by the margin filter (its selection score within TIE of the
    weakest positive's). Each such flip may displace one other negative; any other difference fails, and so
    do model scores of shared documents that differ by more than TIE. The 10% of negatives the old check let
    differ hid a shard-boundary bug: merge_candidates dropping the first row of the second search shard (a
    top-ranked candidate) passed it, and fails this one."""
    import numpy as np
    import pyarrow.parquet as pq

    def candidates(negatives: Path) -> dict[str, dict[str, float]]:
        table = pq.read_table(negatives.parent / "search" / "candidates.parquet")
        out: dict[str, dict[str, float]] = {}
        for q, d, c in zip(*(table[k].to_pylist() for k in ("query_id", "doc_id", "cosine")), strict=True):
            out.setdefault(q, {})[d] = c
        return out

    def selection_scores(record: dict) -> tuple[dict[str, float], float]:
        """Each document's selection score (the cross-encoder's when there is one) and the weakest positive's."""
        scores = record.get("query_doc_ce") or record["query_doc_cos"]
        n_pos = sum(s > 0 for s in record["doc_scores"])
        return dict(zip(record["docs"], scores, strict=True)), min(scores[:n_pos])

    got, want = read_jsonl(path), read_jsonl(reference)
    got_cands, want_cands = candidates(path), candidates(reference)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        n_pos = sum(s > 0 for s in w["doc_scores"])
        assert (g["query"], g["docs"][:n_pos]) == (w["query"], w["docs"][:n_pos])
        assert len(g["docs"]) == len(w["docs"])
        gc, wc = got_cands.get(g["query"], {}), want_cands.get(w["query"], {})
        for d in set(gc) ^ set(wc):
            side = gc if d in gc else wc
            assert side[d] - min(side.values()) <= TIE, f"{g['query']}: candidate {d} is no tie at the boundary"
        (g_scores, g_pos), (w_scores, w_pos) = selection_scores(g), selection_scores(w)
        differ = set(g["docs"][n_pos:]) ^ set(w["docs"][n_pos:])
        ties = {
            d
            for d in differ
            if (d in gc) != (d in wc)
            or (d in g_scores and abs(g_scores[d] - g_pos) <= TIE)
            or (d in w_scores and abs(w_scores[d] - w_pos) <= TIE)
        }
        assert len(differ) <= 2 * len(ties), f"{g['query']}: negatives {sorted(differ - ties)} differ without a tie"
        shared = [(i, w["docs"].index(d)) for i, d in enumerate(g["docs"]) if d in w["docs"]]
        for key in set(w) - {"query", "docs", "doc_scores", "doc_doc_cos"}:
            got_scores = [g[key][i] for i, _ in shared]
            np.testing.assert_allclose(got_scores, [w[key][k] for _, k in shared], atol=TIE, err_msg=key)
