"""Candidate sources through Snakemake: dense, bm25 and a run file fused in a run whose searches are
sharded, what each setting reruns, and negatives that say which source found them."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SELECTION_JOBS, fused_in_one_piece, planned_jobs, read_jsonl, snakemake, write_config

pytestmark = pytest.mark.slow  # runs Snakemake


def test_dense_bm25_and_a_run_file_fused_over_sharded_searches(tmp_path, dataset_block, fixture_data):
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    corpus = [json.loads(line)["_id"] for line in fixture_data["corpus"].read_text().splitlines()]
    query = qrels[0][0]
    judged = {d for q, d, _ in qrels if q == query}
    mine = [d for d in corpus[50:] if d not in judged][:3]
    run_lines = [f"{query} Q0 {d} {i + 1} {3 - i} x\n" for i, d in enumerate(mine)]
    run_lines.append(f"{query} Q0 {sorted(judged)[0]} 1 9 x\n")  # a judged document: never a candidate
    run = tmp_path / "mine.trec"
    run.write_text("".join(run_lines))
    sources = ["dense", "bm25", {"run": str(run)}]
    block = {**dataset_block, "candidate_sources": sources, "candidates": 20}
    write_config(tmp_path, {"fx": block}, scatter={"embed": 2, "search": 2})
    snakemake(tmp_path)
    results = tmp_path / "results" / "fx"
    assert sorted(p.name for p in (results / "bm25" / "candidates").iterdir()) == ["1-of-2.parquet", "2-of-2.parquet"]

    # the fused table is what the library makes of the one-shard sources: sharding changes nothing
    one_shard = tmp_path / "one-shard"
    one_shard.mkdir()
    run_table = {"run_mine": str(results / "runs" / "run_mine.parquet")}
    reference = fused_in_one_piece(results, one_shard, 20, run_table)
    fused = pq.read_table(results / "fuse" / "candidates.parquet")
    assert fused.equals(pq.read_table(reference))

    # the run file's documents are candidates of its query, found by it alone or with another source
    rows = fused.filter(np.asarray(fused["query_id"].to_pylist()) == query).to_pylist()
    # (in fused order, which other sources returning one of them changes; each keeps its rank in the run)
    assert sorted((r["rank_run_mine"], r["doc_id"]) for r in rows if r["rank_run_mine"] is not None) == [
        (i + 1, d) for i, d in enumerate(mine)
    ]

    # every negative lists the sources that returned it, and selection.json counts them
    sources_of = {
        (r["query_id"], r["doc_id"]): [s for s in ("dense", "bm25", "run_mine") if r[f"rank_{s}"]]
        for r in fused.to_pylist()
    }
    negatives = 0
    for record in read_jsonl(results / "negatives.jsonl"):
        n_pos = sum(1 for s in record["doc_scores"] if s >= 1)
        assert record["doc_sources"][:n_pos] == [[]] * n_pos
        for doc, listed in zip(record["docs"][n_pos:], record["doc_sources"][n_pos:], strict=True):
            assert listed == sources_of[(record["query"], doc)]
            negatives += 1
    report = json.loads((results / "selection.json").read_text())
    assert set(report["sources"]) == {"dense", "bm25", "run_mine"}
    assert report["sources"]["run_mine"]["candidates"] == 3
    assert report["sources"]["dense"]["candidates"] == 16 * 20  # every query's 20 dense candidates
    assert sum(v["negatives"] for v in report["sources"].values()) >= negatives == report["counts"]["negatives"]
    assert report["sources"]["bm25"]["negatives"] > 0

    def plan(**changes):
        write_config(tmp_path, {"fx": {**block, **changes}}, scatter={"embed": 2, "search": 2})
        return planned_jobs(snakemake(tmp_path, "-n"))

    fusion = {"fuse_candidates": 1, **SELECTION_JOBS}
    assert plan() == {}
    bm25 = {"index_bm25": 1, "search_bm25": 2, "merge_bm25_candidates": 1}
    assert plan(bm25_k1=1.2) == {**bm25, **fusion}  # only BM25's rules and what follows them
    assert plan(bm25_stopwords=None) == {**bm25, **fusion}
    per_source = {"search": 2, "merge_candidates": 1, "search_bm25": 2, "merge_bm25_candidates": 1, "read_run": 1}
    assert plan(candidates_per_source=10) == {**per_source, **fusion}
    assert plan(candidate_sources=["bm25", "dense"]) == fusion  # another order, another fusion tie-break
    run.write_text(run.read_text() + f"{query} Q0 {corpus[-5]} 4 0 x\n")
    assert plan() == {"read_run": 1, **fusion}
    run.write_text("".join(run_lines))

    # the audit counts false negatives by source: judgments that call three negatives relevant
    picked = [
        (r["query"], d, src)
        for r in read_jsonl(results / "negatives.jsonl")
        for d, src in zip(r["docs"], r["doc_sources"], strict=True)
        if src
    ]
    marked = [next(p for p in picked if "dense" in p[2]), *[p for p in picked if p[2] == ["bm25"]][:2]]
    audit_qrels = tmp_path / "audit.tsv"
    audit_qrels.write_text(fixture_data["qrels"].read_text() + "".join(f"{q}\t{d}\t1\n" for q, d, _ in marked))
    write_config(tmp_path, {"fx": {**block, "audit_qrels": str(audit_qrels)}}, scatter={"embed": 2, "search": 2})
    snakemake(tmp_path)
    configured = json.loads((results / "audit.json").read_text())["strategies"]["negflow (configured)"]
    assert configured["false_negatives"] == 3
    for source in ("dense", "bm25", "run_mine"):
        assert configured["sources"][source]["false_negatives"] == sum(source in src for _, _, src in marked)
        assert configured["sources"][source]["negatives"] == sum(source in src for _, _, src in picked)


def test_a_second_model_is_a_source_with_its_own_embed_and_search(tmp_path, dataset_block, tiny_models):
    import torch
    from sentence_transformers import SentenceTransformer

    second = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in second.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    second.save(str(tmp_path / "second"))
    source = {"model": str(tmp_path / "second"), "query_prompt": "q: "}
    run = tmp_path / "mine.trec"  # beside a second model, as the two kinds of mapping source
    run.write_text("q0 Q0 argparse.Namespace 1 1.0 x\n")
    sources = ["dense", source, {"run": str(run)}]
    block = {**dataset_block, "candidate_sources": sources, "candidates": 10, "train_formats": []}
    write_config(tmp_path, {"fx": block})
    snakemake(tmp_path)
    own = tmp_path / "results" / "fx.model_second"
    assert not (own / "negatives.jsonl").exists()  # a source runs up to its search, nothing after
    assert json.loads((own / "prepare" / "manifest.json").read_text())["query_prompt"] == "q: "
    theirs = pq.read_table(own / "search" / "candidates.parquet").to_pylist()
    fused = pq.read_table(tmp_path / "results" / "fx" / "fuse" / "candidates.parquet").to_pylist()
    found = {(r["query_row"], r["doc_row"]): r for r in fused}
    assert all(found[(r["query_row"], r["doc_row"])]["rank_model_second"] == r["rank"] for r in theirs)
    assert all(found[(r["query_row"], r["doc_row"])]["score_model_second"] == r["cosine"] for r in theirs)
    only_theirs = [r for r in fused if r["rank_dense"] is None]
    assert only_theirs  # the second model finds documents the first does not rank in its 10
    corpus = np.concatenate([np.load(p) for p in sorted((tmp_path / "results/fx/embed/corpus").glob("*.npy"))])
    queries = np.concatenate([np.load(p) for p in sorted((tmp_path / "results/fx/embed/queries").glob("*.npy"))])
    for r in only_theirs:  # the run's own model's cosine, not the source's
        direct = float(corpus[r["doc_row"]].astype(np.float64) @ queries[r["query_row"]].astype(np.float64))
        assert r["cosine"] == pytest.approx(direct, abs=1e-6)
    by_id = {(r["query_id"], r["doc_id"]): r for r in fused}
    listed = 0
    for record in read_jsonl(tmp_path / "results/fx/negatives.jsonl"):
        first = sum(1 for grade in record["doc_scores"] if grade >= 1)
        for doc, found in zip(record["docs"][first:], record["doc_sources"][first:], strict=True):
            row = by_id[(record["query"], doc)]
            assert found == [s for s in ("dense", "model_second", "run_mine") if row[f"rank_{s}"] is not None]
            listed += "model_second" in found
    assert listed > 0

    changed = ["dense", {**source, "query_prompt": "query: "}, {"run": str(run)}]
    write_config(tmp_path, {"fx": {**block, "candidate_sources": changed}})
    assert planned_jobs(snakemake(tmp_path, "-n")) == {
        "prepare": 1,  # the second model's, not the run's
        "prepare_judgments": 1,
        "embed": 1,
        "search": 1,
        "merge_candidates": 1,
        "fuse_candidates": 1,
        **{job: n for job, n in SELECTION_JOBS.items() if not job.startswith("export_") or job == "export_negatives"},
    }
