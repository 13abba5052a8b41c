"""What selection reads, loaded once per stage: each query's candidates with their cosines, ranks and
embeddings, its positives and given negatives, cross-encoder scores when there are any, and the text
hashes that catch exact duplicates; handed out one query at a time in query order, streaming the
candidate files block by block. Export and audit both build it from their rule's inputs
(`Candidates.from_inputs`) and select with `Candidates.select`, which pads a query left short with
documents from outside its candidates.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negflow import layout
from negflow.files import SortedRows, open_parquet, read_parquet
from negflow.grades import GIVEN_NEGATIVE
from negflow.selection import (
    SCORE_FILTERS,
    QueryScores,
    QuerySelection,
    Selection,
    SelectionSettings,
    candidate_noise,
    filter_mask,
    lists_given_negatives,
    select_query,
)
from negflow.sources import fused_sources, rank_column
from negflow.store import ShardedEmbeddings, load_table

PAD_DRAWS = 8  # rounds of random corpus draws before a query is left short


def group_bounds(sorted_keys: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(key, start, stop) of each run of equal keys in a sorted array."""
    if len(sorted_keys) == 0:
        return
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    stops = np.r_[starts[1:], len(sorted_keys)]
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(sorted_keys[start]), start, stop


class PairScores:
    """Cross-encoder score lookup by (query_row, doc_row), vectorised with a sorted int64 key."""

    def __init__(self, query_rows: np.ndarray, doc_rows: np.ndarray, scores: np.ndarray, n_docs: int):
        self.n_docs = n_docs
        keys = query_rows.astype(np.int64) * n_docs + doc_rows.astype(np.int64)
        order = np.argsort(keys)
        self.keys, self.scores = keys[order], scores[order]

    def get(self, query_row: int, doc_rows: np.ndarray) -> np.ndarray:
        keys = query_row * self.n_docs + doc_rows.astype(np.int64)
        pos = np.searchsorted(self.keys, keys)
        if np.any(pos >= len(self.keys)) or np.any(self.keys[np.minimum(pos, len(self.keys) - 1)] != keys):
            raise ValueError(f"cross-encoder scores are missing pairs of query row {query_row}; rerun score")
        return self.scores[pos]


def text_hashes(corpus_dir: str) -> np.ndarray:
    """A 64-bit hash of every document's text, to spot exact duplicates of a positive."""
    table = load_table(corpus_dir, ["text"])
    out = np.empty(table.num_rows, dtype=np.int64)
    row = 0
    for batch in table.to_batches(max_chunksize=65_536):
        texts = batch.column(0).to_pylist()
        out[row : row + len(texts)] = [hash(t) for t in texts]
        row += len(texts)
    return out


@dataclass
class QueryCandidates:
    """One query: its positives and its retrieved candidates in rank order, with their scores."""

    query_row: int
    query_id: str
    pos_rows: np.ndarray
    pos_ids: list[str]
    pos_grades: np.ndarray
    pos_cos: np.ndarray
    pos_ce: np.ndarray | None
    cand_rows: np.ndarray
    cand_ids: list[str]
    cand_ranks: np.ndarray
    cand_cos: np.ndarray
    cand_ce: np.ndarray | None
    cand_emb: np.ndarray
    pos_emb: np.ndarray
    cand_hashes: np.ndarray
    pos_hashes: np.ndarray
    given_rows: np.ndarray
    given_ids: list[str]
    given_cos: np.ndarray
    given_ce: np.ndarray | None
    cand_sources: np.ndarray | None = None  # with several candidate sources: (candidates x sources) returned-by
    _scores: dict[str, QueryScores] = field(default_factory=dict, repr=False)

    def scores(self, score_name: str) -> QueryScores:
        """What the filters read, built once per query: the audit selects from it once per strategy."""
        if score_name not in self._scores:
            self._scores[score_name] = self._build_scores(score_name)
        return self._scores[score_name]

    def _build_scores(self, score_name: str) -> QueryScores:
        ce = score_name == "ce"
        return QueryScores(
            scores=self.cand_ce if ce else self.cand_cos,
            positive_scores=self.pos_ce if ce else self.pos_cos,
            ranks=self.cand_ranks - 1,  # 0-based: range_min=10 skips the 10 best, as hn_mine does
            ce_scores=self.cand_ce,
            positive_cos=self.cand_emb @ self.pos_emb.T,
            positive_query_cos=self.pos_cos,
            candidate_cos=self.cand_emb @ self.cand_emb.T,
            same_text=np.isin(self.cand_hashes, self.pos_hashes),
        )


class Candidates:
    """Search results, positives, embeddings and (optional) cross-encoder scores of one dataset, handed out
    a query at a time. The candidates and scores (queries x candidates rows) are read in blocks of queries
    from their files, which search and score write in query order, so memory does not grow with queries."""

    QUERY_BLOCK = 2048

    def __init__(
        self,
        candidates_path: str,
        qrels_path: str,
        corpus_shards: list[str],
        query_shards: list[str],
        corpus_dir: str,
        scores_path: str | None,
        selection_score: str,
        list_given: bool = False,
    ):
        """`list_given`: a pairs dataset's given negatives (qrels grade GIVEN_NEGATIVE, from read_pairs with
        given_negatives: keep) come with each query, to be listed before the mined ones."""
        self.candidates_path = candidates_path
        self.scores_path = scores_path
        self.corpus = ShardedEmbeddings(corpus_shards)
        self.queries = ShardedEmbeddings(query_shards)
        self.corpus_dir = corpus_dir
        self.hashes = text_hashes(corpus_dir)
        score_name = selection_score
        if score_name == "auto":
            score_name = "ce" if scores_path else "cosine"
        if score_name == "ce" and not scores_path:
            raise ValueError("selection_score 'ce' needs cross-encoder scores")
        self.score_name = score_name
        self.has_ce = scores_path is not None
        # the candidate sources of a fused table (negflow.sources), in their listed order; [] for dense alone
        self.source_names = fused_sources(open_parquet(candidates_path).schema_arrow)

        qrels = read_parquet(qrels_path)
        order = np.argsort(qrels["query_row"].to_numpy(), kind="stable")  # keeps qrels order within a query
        qrels = qrels.take(pa.array(order))
        self.judged_query = qrels["query_row"].to_numpy()  # every qrels document (positive or judged), by query
        self.judged_doc = qrels["doc_row"].to_numpy()
        pos = qrels.filter(qrels["positive"])
        self.p_query = pos["query_row"].to_numpy()
        self.p_doc_row = pos["doc_row"].to_numpy()
        self.p_doc_id = pos["doc_id"]
        self.p_score = pos["score"].to_numpy()
        self.p_cos = pos["cosine"].to_numpy()
        self.p_query_id = pos["query_id"]
        given = qrels.slice(0, 0)
        if list_given:
            is_given = pc.equal(qrels["score"], GIVEN_NEGATIVE)
            given = qrels.filter(pc.and_(is_given, pc.invert(qrels["positive"])))
        self.g_query = given["query_row"].to_numpy()
        self.g_doc_row = given["doc_row"].to_numpy()
        self.g_doc_id = given["doc_id"]
        self.g_cos = given["cosine"].to_numpy()

    def __len__(self) -> int:
        """The queries handed out: those with a positive."""
        return len(np.unique(self.p_query))

    def positive_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the queries handed out (ascending) and how many positives each has."""
        return np.unique(self.p_query, return_counts=True)

    @classmethod
    def from_inputs(cls, inputs: Mapping, settings: dict) -> Candidates:
        """The candidates a selecting rule reads, from its inputs (`candidates`, `qrels`, the `corpus` and
        `queries` embedding shards, `corpus_dir` and, with a cross-encoder, `scores`) and its settings."""
        return cls(
            inputs["candidates"],
            inputs["qrels"],
            list(inputs["corpus"]),
            list(inputs["queries"]),
            inputs["corpus_dir"],
            inputs.get("scores"),
            settings["selection_score"],
            lists_given_negatives(settings),
        )

    @classmethod
    def of_run(cls, workdir: str | Path, dataset: str, selection_score: str = "auto") -> Candidates:
        """The candidates of a dataset of a finished run (no cross-encoder), read from the run's folder: what
        benches and tests replay after Snakemake is done."""

        def path(pattern: str, **wildcards: str) -> str:
            return str(Path(workdir) / layout.run_file(pattern, dataset, **wildcards))

        fused = path(layout.fuse_candidates.candidates)  # a run with candidate sources other than dense alone
        return cls(
            fused if Path(fused).exists() else path(layout.merge_candidates.candidates),
            path(layout.compute_qrels_cosines.cosines),
            sorted(glob.glob(path(layout.embed.corpus, scatteritem="*"))),
            sorted(glob.glob(path(layout.embed.queries, scatteritem="*"))),
            path(layout.prepare.corpus),
            None,
            selection_score,
        )

    def __iter__(self) -> Iterator[QueryCandidates]:
        return self.iterate()

    def iterate(self, only: np.ndarray | None = None) -> Iterator[QueryCandidates]:
        """The queries in row order; `only`: just these query rows. The files are still read front to back,
        but the embeddings, hashes and ids of the queries left out are never gathered (the costly part)."""
        source_columns = [rank_column(name) for name in self.source_names]
        candidates = SortedRows(
            self.candidates_path, "query_row", ["query_row", "doc_row", "doc_id", "rank", "cosine", *source_columns]
        )
        scores = (
            SortedRows(self.scores_path, "query_row", ["query_row", "doc_row", "ce_score"]) if self.has_ce else None
        )
        queries = list(group_bounds(self.p_query))
        wanted = None if only is None else set(np.asarray(only).tolist())
        for start in range(0, len(queries), self.QUERY_BLOCK):
            block = queries[start : start + self.QUERY_BLOCK]
            stop = block[-1][0] + 1
            m = candidates.below(stop)
            t = scores.below(stop) if scores is not None else None
            if wanted is not None:  # the block's rows of the wanted queries alone, before anything is gathered
                block = [bounds for bounds in block if bounds[0] in wanted]
                rows = [q for q, _, _ in block]
                m, t = (x if x is None else x.filter(np.isin(x["query_row"].to_numpy(), rows)) for x in (m, t))
            m_query, m_doc_row, m_rank, m_cos = (m[c].to_numpy() for c in ("query_row", "doc_row", "rank", "cosine"))
            m_doc_id = m["doc_id"].to_pylist()
            m_sources = None
            if source_columns:
                m_sources = np.column_stack([pc.is_valid(m[c]).to_numpy(zero_copy_only=False) for c in source_columns])
            m_bounds = {q: (a, b) for q, a, b in group_bounds(m_query)}
            ce = None
            if t is not None:
                ce = PairScores(
                    t["query_row"].to_numpy(), t["doc_row"].to_numpy(), t["ce_score"].to_numpy(), len(self.corpus)
                )
            for q, a, b in block:
                ma, mb = m_bounds.get(q, (0, 0))
                ga, gb = np.searchsorted(self.g_query, [q, q + 1])
                pos_rows = self.p_doc_row[a:b]
                cand_rows = m_doc_row[ma:mb]
                given_rows = self.g_doc_row[ga:gb]
                yield QueryCandidates(
                    query_row=q,
                    query_id=self.p_query_id[a].as_py(),
                    pos_rows=pos_rows,
                    pos_ids=self.p_doc_id[a:b].to_pylist(),
                    pos_grades=self.p_score[a:b],
                    pos_cos=self.p_cos[a:b].astype(np.float64),
                    pos_ce=ce.get(q, pos_rows) if ce else None,
                    cand_rows=cand_rows,
                    cand_ids=m_doc_id[ma:mb],
                    cand_ranks=m_rank[ma:mb],
                    cand_cos=m_cos[ma:mb].astype(np.float64),
                    cand_ce=ce.get(q, cand_rows) if ce else None,
                    cand_emb=self.corpus.take(cand_rows),
                    pos_emb=self.corpus.take(pos_rows),
                    cand_hashes=self.hashes[cand_rows],
                    pos_hashes=self.hashes[pos_rows],
                    given_rows=given_rows,
                    given_ids=self.g_doc_id[ga:gb].to_pylist(),
                    given_cos=self.g_cos[ga:gb].astype(np.float64),
                    given_ce=ce.get(q, given_rows) if ce else None,
                    cand_sources=None if m_sources is None else m_sources[ma:mb],
                )

    def select(self, query: QueryCandidates, s: SelectionSettings) -> QuerySelection:
        """Selection of one query (`selection.select_query`): its given negatives count towards num_negatives,
        the sampler's noise is keyed by seed, query and document (so a query's picks depend neither on which
        other queries are mined nor on which other documents are candidates), and a short query is padded
        from outside its candidates."""
        noise = candidate_noise(s.seed, query.query_row, query.cand_rows)
        return select_query(query.scores(self.score_name), s, noise, len(query.given_rows), partial(self.pad, query))

    def judged(self, query_row: int) -> np.ndarray:
        """Every qrels document of a query (positives and judged non-relevant)."""
        a, b = np.searchsorted(self.judged_query, [query_row, query_row + 1])
        return self.judged_doc[a:b]

    @cached_property
    def _corpus_ids(self):
        return load_table(self.corpus_dir, ["id"])["id"]

    def doc_ids(self, rows: np.ndarray) -> list[str]:
        """Ids of corpus rows outside the candidates (padding picks)."""
        if len(rows) == 0:
            return []
        return self._corpus_ids.take(rows).to_pylist()

    def pad(self, query: QueryCandidates, selection: Selection, s: SelectionSettings) -> list[tuple[int, float]]:
        """Random corpus documents (row, cosine) that pass the filters, to fill a short query. On a
        cross-encoder selection score the score filters cannot see them (they have no CE score): they
        rank below every candidate, so a ceiling rarely matters there."""
        missing = s.num_negatives - len(selection.chosen)
        rng = np.random.default_rng([s.seed, query.query_row, 1])
        q_emb = self.queries.take(np.array([query.query_row]))[0]
        taken = set(self.judged(query.query_row).tolist()) | set(query.cand_rows.tolist())
        kept_emb = [query.cand_emb[i] for i in selection.chosen]
        # no rank, and on a cross-encoder selection score no score either
        filters = s.without("window", *(SCORE_FILTERS if self.score_name != "cosine" else ()))
        picks: list[tuple[int, float]] = []
        n = len(self.corpus)
        for _ in range(PAD_DRAWS):
            draws = rng.choice(n, size=min(n, 4 * missing + 8), replace=False).tolist()
            rows = np.array([r for r in draws if r not in taken], dtype=np.int64)
            if len(rows) == 0:
                continue
            emb = self.corpus.take(rows)
            cos = (emb @ q_emb).astype(np.float64)
            scores = QueryScores(
                scores=cos,
                positive_scores=query.pos_cos,
                positive_cos=emb @ query.pos_emb.T,
                positive_query_cos=query.pos_cos,
                same_text=np.isin(self.hashes[rows], query.pos_hashes),
            )
            keep, _ = filter_mask(scores, filters)
            for i in np.flatnonzero(keep).tolist():
                taken.add(int(rows[i]))
                if s.dup_threshold is not None and kept_emb and np.max(np.array(kept_emb) @ emb[i]) > s.dup_threshold:
                    continue
                picks.append((int(rows[i]), float(cos[i])))
                kept_emb.append(emb[i])
                if len(picks) == missing:
                    return picks
        return picks
