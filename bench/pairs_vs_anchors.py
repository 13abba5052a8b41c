"""Pair mode against sentence-transformers' mine_hard_negatives on the same (anchor, positive) pairs: negflow
reads ../shared/datasets/msmarco-subset as a pair file (plus its corpus) and mines it end to end with Snakemake.

Protocol (shared/datasets/README.md): each judged query shows the miner one top-graded positive (the first
passage of the highest grade >= 2, in qrels file order); 10 negatives per query; a negative is false when its
text is the text of another passage graded >= 2 for that query. Hardness = median rank of the negatives in the
query's exact cosine ranking over the corpus on negflow's all-MiniLM-L6-v2 embeddings (1 = the best document
other than the visible positive; lower is harder).

1. negflow, pair mode: a JSONL file of ["query", "positive"] lines with the corpus as `corpus:` (default
   selection, num_negatives 10); the wall time is that of the whole Snakemake call (--forceall).
2. negflow, BEIR mode on the same data (the judged queries, the corpus, qrels of the visible positives with
   score 1), and both modes again with `sampling: top` (a rerun of the exports only: the setting changes
   nothing upstream): the candidates (compared by query text and doc id), the per-filter drop counts and,
   with top sampling, the negatives must be equal. Random picks may differ:
   their noise is keyed by query and document row, and pair mode merges the corpus' identical texts, so with
   random sampling `duplicate_of_negative` (which follows the order negatives are taken in) may differ too.
3. sentence-transformers' mine_hard_negatives on the same pairs and corpus, embedding with its own model
   (batch 64, exact search; the model load is not timed) with the settings the README measured: top,
   relative_margin=0.05, and ranks 10-210 at random (Python's `random`, which it samples with, seeded).

Usage: python bench/pairs_vs_anchors.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench-pairs]
       python bench/pairs_vs_anchors.py --smoke   # a few queries of msmarco-subset: checks the code path only
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from selection_vs_anchors import (  # noqa: E402
    MODEL,
    NEGATIVES,
    SEED,
    msmarco_subset_and_workdir,
    rank_lists,
    read_qrels,
    score,
    visible_positives,
)

from negflow.negatives import read_negatives  # noqa: E402
from negflow.refs import resolve_model_ref  # noqa: E402
from negflow.store import ShardedEmbeddings, load_table  # noqa: E402
from negflow.text_ids import normalise, text_hash  # noqa: E402

MODES = ("pairs", "beir")
NEGFLOW = "negflow pair mode default (snakemake end to end)"
ST_MARGIN = "sentence-transformers relative_margin=0.05"
ST_RANDOM = "sentence-transformers ranks 10-210 random"
ST_SETTINGS = {
    "sentence-transformers top": {"sampling_strategy": "top"},
    ST_MARGIN: {"relative_margin": 0.05},
    ST_RANDOM: {"range_min": 10, "range_max": 210, "sampling_strategy": "random"},
}


def joined(doc: dict) -> str:
    """A corpus document's text as negflow reads it: the title joined to the text by a space."""
    title, text = doc.get("title") or "", doc["text"]
    return (f"{title} {text}" if title.strip() else text).strip()


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_config(
    workdir: Path, data: Path, judged: list[dict], pairs: list[tuple[str, str]], visible, sampling: str | None = None
) -> None:
    """The judged queries as a pair file (dataset `pairs`) and as BEIR queries + qrels (the visible positive,
    score 1; dataset `beir`), mined with the default sampling or the one given."""
    files = {"pairs": workdir / "pairs.jsonl", "queries": workdir / "queries.jsonl", "qrels": workdir / "qrels.tsv"}
    files["pairs"].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    files["queries"].write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in judged), encoding="utf-8")
    files["qrels"].write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q['_id']}\t{visible[q['_id']]}\t1\n" for q in judged)
    )
    common = {"corpus": str(data / "corpus.jsonl"), "embedding": MODEL, "num_negatives": NEGATIVES}
    common["train_formats"] = []
    if sampling:
        common["sampling"] = sampling
    blocks = {
        "pairs": {"pairs": str(files["pairs"]), **common},
        "beir": {"queries": str(files["queries"]), "qrels": str(files["qrels"]), **common},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump({"datasets": blocks}))


def snakemake(workdir: Path, names: list[str], *options: str) -> float:
    """Mine the named datasets of workdir/config.yaml (negatives and selection report); the wall time."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--cores", str(os.cpu_count() or 2), f"--configfile={workdir / 'config.yaml'}", "--quiet=rules", *options]
    targets = [f"results/{name}/{file}" for name in names for file in ("negatives.jsonl", "selection.json")]
    start = time.perf_counter()
    subprocess.run([*cmd, *targets], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def candidates(results: Path, qid: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
    """(doc id, cosine) of every query's retrieved candidates in rank order, by BEIR query id."""
    table = pq.read_table(results / "search/candidates.parquet", columns=["query_id", "doc_id", "rank", "cosine"])
    out: dict[str, list[tuple[str, float]]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["query_id"], r["rank"])):
        out.setdefault(qid[row["query_id"]], []).append((row["doc_id"], row["cosine"]))
    return out


def negatives(results: Path, qid: dict[str, str]) -> dict[str, list[str]]:
    """Every query's selected negatives (doc ids, in negatives.jsonl order), by BEIR query id."""
    return {qid[r.query]: r.negatives() for r in read_negatives(results / "negatives.jsonl")}


def sizes(by_mode: dict[str, dict]) -> str:
    return " vs ".join(str(len(by_mode[mode])) for mode in MODES)


def check_modes(results: dict[str, dict[str, Path]], qid: dict[str, dict[str, str]]) -> None:
    """Print whether pair and BEIR mode retrieved the same candidates (and where not), dropped as many per
    filter, and with top sampling selected the same negatives (`results`: each sampling's mode folders)."""
    found = {mode: candidates(results["top"][mode], qid[mode]) for mode in MODES}
    ids = {mode: {q: [d for d, _ in c] for q, c in found[mode].items()} for mode in MODES}
    cosine = {mode: {(q, d): c for q, cands in found[mode].items() for d, c in cands} for mode in MODES}
    shared = cosine["pairs"].keys() & cosine["beir"].keys()
    print(f"candidates equal: {ids['pairs'] == ids['beir']} ({sizes(ids)} queries)")
    difference = max(abs(cosine["pairs"][k] - cosine["beir"][k]) for k in shared)
    print(f"  max |cosine difference| over the {len(shared)} candidates both retrieved: {difference:.2e}")
    for q in sorted(ids["pairs"].keys() | ids["beir"].keys()):
        p, b = ids["pairs"].get(q, []), ids["beir"].get(q, [])
        if p != b:
            print(
                f"  query {q}: pairs only {[(d, p.index(d) + 1) for d in p if d not in b]}, "
                f"beir only {[(d, b.index(d) + 1) for d in b if d not in p]} (doc, rank); same set: {set(p) == set(b)}"
            )
    for sampling in ("random", "top"):
        dropped = {m: json.loads((results[sampling][m] / "selection.json").read_text())["dropped"] for m in MODES}
        # which near-duplicate of a kept negative is met depends on the order negatives are taken in, and
        # random order is keyed by corpus row, which differs where pair mode merged identical texts
        ordered = {"duplicate_of_negative"} if sampling == "random" else set()
        same = {m: {k: v for k, v in dropped[m].items() if k not in ordered} for m in MODES}
        skipped = f" (all but {', '.join(sorted(ordered))}, which follows the random order)" if ordered else ""
        shown = "random (default)" if sampling == "random" else sampling
        print(f"selection drops equal, sampling {shown}{skipped}: {same['pairs'] == same['beir']}")
        for mode in MODES:
            print(f"  {mode:5s} {dropped[mode]}")
    top = {mode: negatives(results["top"][mode], qid[mode]) for mode in MODES}
    print(f"negatives equal, sampling top: {top['pairs'] == top['beir']} ({sizes(top)} queries)")


def run_sentence_transformers(model, corpus: list[str], pairs: list[tuple[str, str]], settings: dict):
    """mine_hard_negatives on the pairs; the negatives' texts per anchor and the call's wall time."""
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    dataset = datasets.Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    random.seed(SEED)
    start = time.perf_counter()
    out = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        num_negatives=NEGATIVES,
        output_format="labeled-list",
        batch_size=64,
        use_faiss=False,
        verbose=False,
        **settings,
    )
    wall = time.perf_counter() - start
    return {row["anchor"]: row["positive"][1:] for row in out}, wall


def main() -> None:
    data, workdir = msmarco_subset_and_workdir(__doc__.split("\n")[0], "/tmp/negflow-bench-pairs")
    bench_start = time.perf_counter()

    corpus_docs = read_jsonl(data / "corpus.jsonl")
    corpus_texts = [joined(doc) for doc in corpus_docs]
    doc_text = {doc["_id"]: text for doc, text in zip(corpus_docs, corpus_texts, strict=True)}
    qrels = read_qrels(data / "qrels" / "test.tsv")
    visible = {q: d for q, (d, _) in visible_positives(qrels).items()}
    judged = [q for q in read_jsonl(data / "queries.jsonl") if q["_id"] in visible]
    pairs = [(q["text"], doc_text[visible[q["_id"]]]) for q in judged]
    write_config(workdir, data, judged, pairs, visible)
    negflow_wall = snakemake(workdir, ["pairs"], "--forceall")
    snakemake(workdir, ["beir"])
    live = {mode: workdir / "results" / mode for mode in MODES}  # every stage's files; top sampling's exports
    results = {"random": {mode: workdir / "random" / mode for mode in MODES}, "top": live}
    for mode in MODES:  # the default's exports, kept aside before the rerun with top sampling replaces them
        results["random"][mode].mkdir(parents=True, exist_ok=True)
        for name in ("negatives.jsonl", "selection.json"):
            shutil.copyfile(live[mode] / name, results["random"][mode] / name)
    write_config(workdir, data, judged, pairs, visible, sampling="top")
    snakemake(workdir, list(MODES))

    # by BEIR query id: pair mode's query ids are content hashes of the normalised text
    qid = {
        "pairs": {text_hash(normalise(q["text"])): q["_id"] for q in judged},
        "beir": {q["_id"]: q["_id"] for q in judged},
    }
    print(f"\nmsmarco-subset, {len(judged)} judged queries as pairs, all-MiniLM-L6-v2, {NEGATIVES} negatives")
    check_modes(results, qid)

    # exact ranking on pair mode's embeddings; its corpus holds every distinct text once, so rows are texts
    prepared = live["pairs"] / "prepare"
    row_of_text = {normalise(t): i for i, t in enumerate(load_table(prepared / "corpus", ["text"])["text"].to_pylist())}
    q_order = [qid["pairs"][i] for i in load_table(prepared / "queries", ["id"])["id"].to_pylist()]
    emb = {
        part: ShardedEmbeddings(sorted(str(p) for p in (live["pairs"] / "embed" / part).glob("*.npy")))
        for part in ("queries", "corpus")
    }
    emb = {part: e.take(np.arange(len(e))) for part, e in emb.items()}
    ranking = dict(zip(q_order, rank_lists(emb["queries"], emb["corpus"]), strict=True))
    visible_row = {q: row_of_text[normalise(doc_text[d])] for q, d in visible.items()}
    relevant_rows = {q: set() for q in visible}
    for q, d, s in qrels:
        if s >= 2 and d != visible[q]:
            relevant_rows[q].add(row_of_text[normalise(doc_text[d])])

    def rows(picks: dict[str, list[str]]) -> dict[str, list[int]]:
        return {q: [row_of_text[normalise(doc_text[d])] for d in docs] for q, docs in picks.items()}

    table = {
        NEGFLOW: (rows(negatives(results["random"]["pairs"], qid["pairs"])), negflow_wall),
        "negflow BEIR mode default (reference, not timed)": (
            rows(negatives(results["random"]["beir"], qid["beir"])),
            None,
        ),
    }
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_ref(MODEL))
    qid_of_anchor = {anchor: q["_id"] for q, (anchor, _) in zip(judged, pairs, strict=True)}
    for name, settings in ST_SETTINGS.items():
        negs, wall = run_sentence_transformers(model, corpus_texts, pairs, settings)
        table[name] = ({qid_of_anchor[a]: [row_of_text[normalise(t)] for t in n] for a, n in negs.items()}, wall)

    fn = {}
    print(f"\n{'strategy':52s} {'FN rate':>8s} {'median rank':>12s} {'negatives':>10s} {'wall time':>10s}")
    for name, (picks, wall) in table.items():
        r = score(picks, ranking, visible_row, relevant_rows)
        fn[name] = r["fn_rate"]
        wall_text = "-" if wall is None else f"{wall:.1f}s"
        print(f"{name:52s} {100 * r['fn_rate']:7.1f}% {r['median_rank']:12.1f} {r['negatives']:10d} {wall_text:>10s}")
    ratio = fn[NEGFLOW] / fn[ST_MARGIN] if fn[ST_MARGIN] else float("nan")  # nothing to compare against
    print(
        f"\nnegflow FN rate / ST relative_margin=0.05 FN rate = {ratio:.2f} (target <= 0.5): "
        f"{'PASS' if ratio <= 0.5 else 'FAIL'}"
    )
    print(
        f"negflow FN rate vs ST ranks 10-210 random: {100 * fn[NEGFLOW]:.1f}% vs {100 * fn[ST_RANDOM]:.1f}% "
        f"(target: below): {'PASS' if fn[NEGFLOW] < fn[ST_RANDOM] else 'FAIL'}"
    )
    print(f"bench wall time: {time.perf_counter() - bench_start:.1f}s")


if __name__ == "__main__":
    main()
