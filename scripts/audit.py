"""Rule audit: false-negative rate and hardness of the selected negatives next to the anchors' strategies,
and the embedding model's retrieval quality on audit_qrels."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake


from negflow.audit import anchor_strategies, audit_selection, format_table, write_report
from negflow.candidates import MinedCandidates
from negflow.evaluate import evaluate_model, load_judgments
from negflow.files import read_parquet
from negflow.selection import SelectionSettings
from negflow.stage import run_stage
from negflow.store import load_table, read_manifest


def main(log):
    s = snakemake.params.settings
    inp = snakemake.input
    doc_ids = load_table(inp.corpus_dir, ["id"])["id"].to_pylist()
    if s["audit_qrels"]:
        judged, query_texts = load_judgments(inp.judgments, "audit")
        source = {"audit_qrels": s["audit_qrels"]}
    else:
        judged = {}
        for row in read_parquet(inp.holdout).to_pylist():
            judged.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
        source = {"audit_holdout": f"{sum(map(len, judged.values()))} hidden positives of {len(judged)} queries"}
    relevant = {q: {d for d, g in grades.items() if g >= s["min_positive_score"]} for q, grades in judged.items()}
    relevant = {q: docs for q, docs in relevant.items() if docs}

    mined = MinedCandidates(
        mined_path=inp.mined,
        qrels_path=inp.qrels,
        corpus_shards=list(inp.corpus),
        query_shards=list(inp.queries),
        corpus_dir=inp.corpus_dir,
        scored_path=inp.get("scored"),
        selection_score=s["selection_score"],
    )
    strategies = anchor_strategies(SelectionSettings.from_settings(s), has_ce=mined.has_ce)
    report = {"judgments": source, "selection_score": mined.score_name, **audit_selection(mined, strategies, relevant)}
    log.info("false negatives and hardness on the same candidates:\n%s", format_table(report["strategies"]))

    if s["audit_qrels"]:
        from negflow.models import BatchLimits, compute_dtype, configured_embedding_model, pick_device

        device = pick_device(s["device"])
        model = configured_embedding_model(s, device)
        report["retrieval"] = evaluate_model(
            model,
            query_texts,
            judged,
            mined.corpus.chunks(65_536),
            doc_ids,
            read_manifest(inp.manifest).query_prompt,
            s["min_positive_score"],
            BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens),
            device,
            compute_dtype(s["embedding_dtype"], device),
        )
        log.info("retrieval quality of %s on %s: %s", s["embedding"], s["audit_qrels"], report["retrieval"])
    write_report(report, snakemake.output[0])


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
