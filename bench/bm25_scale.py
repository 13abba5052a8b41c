"""The bm25 source at scale: negflow's index_bm25 and search_bm25 (the rules' library calls, on prepared
Arrow tables) against bm25s used directly in one process on the same texts (a Python list of the corpus,
bm25s.tokenize, BM25.index, BM25.retrieve), on synthetic passages. negflow's index and search each run in
a process of their own, as the rules do, and bm25s in one, so each peak RSS is its own; the same stemmer,
stopwords, k1, b and candidates (100) on both.

Passages: 30-80 words drawn from a Zipf distribution over 50,000 made-up words. Two query sets of 3-8
words: `any` draws them from the same distribution, so nearly every query holds words most passages contain
(the worst case: a query's posting lists cover the corpus several times over); `content` skips the 100
most frequent words, as stopwords leave a real query's words (its posting lists are a few percent of the
corpus). Search is timed on each.

Usage: python bench/bm25_scale.py [--sizes 300000,1000000] [--queries 10000] [--workdir /tmp/negflow-bench-bm25]
       python bench/bm25_scale.py --smoke   # 3,000 passages, 200 queries: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from process_memory import in_fresh_process, peak_rss_mb  # noqa: E402

SETTINGS = {"bm25_k1": 1.5, "bm25_b": 0.75, "bm25_stemmer": "english", "bm25_stopwords": "en"}
CANDIDATES = 100
VOCABULARY = 50_000


QUERY_SETS = {"any": 0, "content": 100}  # query set: the most frequent words it skips


def texts(n: int, low: int, high: int, seed: int, skip: int = 0) -> list[str]:
    """n synthetic texts of low..high Zipf-distributed made-up words, the `skip` most frequent left out."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, size=n)
    words = np.zeros(0, dtype=np.int64)
    while len(words) < lengths.sum():  # draws beyond the vocabulary are drawn again, not piled on its last word
        draws = rng.zipf(1.2, size=int(lengths.sum()))
        words = np.concatenate([words, draws[draws <= VOCABULARY - skip] + skip - 1])
    words = words[: lengths.sum()]
    names = np.array([f"w{i:x}q" for i in range(VOCABULARY)], dtype=object)
    tokens = names[words]
    ends = np.cumsum(lengths)
    return [" ".join(tokens[end - length : end]) for end, length in zip(ends, lengths, strict=True)]


def write_prepared(folder: Path, table: pa.Table) -> None:
    """A table in prepare's layout (Arrow stream files listed in state.json), as the stages read it."""
    folder.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))


def make_data(workdir: Path, size: int, queries: int) -> Path:
    folder = workdir / f"data-{size}-{queries}q"  # the rates divide by `queries`: a folder per count
    if (folder / "qrels" / "state.json").exists():
        return folder
    docs = texts(size, 30, 80, 1)
    write_prepared(folder / "corpus", pa.table({"id": [f"d{i}" for i in range(size)], "text": docs}))
    for name, skip in QUERY_SETS.items():
        asked = texts(queries, 3, 8, 2, skip)
        write_prepared(folder / f"queries-{name}", pa.table({"id": [f"q{i}" for i in range(queries)], "text": asked}))
    empty = {"query_id": pa.string(), "doc_id": pa.string(), "doc_row": pa.int64(), "score": pa.int32()}
    qrels = pa.table({**{k: pa.array([], t) for k, t in empty.items()}, "positive": pa.array([], pa.bool_())})
    write_prepared(folder / "qrels", qrels)
    return folder


def run_negflow_index(data: Path, out: Path) -> dict:
    from negflow.bm25 import index_bm25

    start = time.perf_counter()
    index_bm25(str(data / "corpus"), SETTINGS, str(out / "index"))
    return {"index": time.perf_counter() - start}


def run_negflow_search(data: Path, out: Path) -> dict:
    from negflow.bm25 import search_bm25

    times = {}
    for name in QUERY_SETS:
        start = time.perf_counter()
        search_bm25(
            str(out / "index"),
            str(data / f"queries-{name}"),
            str(data / "corpus"),
            str(data / "qrels"),
            SETTINGS,
            CANDIDATES,
            str(out / f"candidates-{name}.parquet"),
        )
        times[f"search {name}"] = time.perf_counter() - start
    return times


def run_bm25s(data: Path, out: Path) -> dict:
    import bm25s
    import Stemmer

    from negflow.store import load_table

    corpus = load_table(data / "corpus", ["text"])["text"].to_pylist()
    stemmer = Stemmer.Stemmer(SETTINGS["bm25_stemmer"])
    start = time.perf_counter()
    retriever = bm25s.BM25(k1=SETTINGS["bm25_k1"], b=SETTINGS["bm25_b"])
    retriever.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    times = {"index": time.perf_counter() - start}
    for name in QUERY_SETS:
        queries = load_table(data / f"queries-{name}", ["text"])["text"].to_pylist()
        start = time.perf_counter()
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
        retriever.retrieve(tokens, k=CANDIDATES, show_progress=False)
        times[f"search {name}"] = time.perf_counter() - start
    return times


def child(side: str, data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    times = {"negflow-index": run_negflow_index, "negflow-search": run_negflow_search, "bm25s": run_bm25s}[side](
        data, out
    )
    times["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(times))


def measure(side: str, data: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--data", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="300000,1000000")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--workdir", default="/tmp/negflow-bench-bm25")
    parser.add_argument("--smoke", action="store_true", help="3,000 passages, 200 queries: the code path only")
    parser.add_argument("--child", choices=["negflow-index", "negflow-search", "bm25s"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data), Path(args.out))
        return
    sizes = [3_000] if args.smoke else [int(v) for v in args.sizes.split(",")]
    queries = 200 if args.smoke else args.queries
    workdir = Path(args.workdir)
    print(
        f"{'passages':>10s} {'side':>8s} {'index docs/s':>13s} {'queries/s: any':>15s} {'content':>8s} "
        f"{'peak RSS MB: index':>19s} {'search':>7s}"
    )
    for size in sizes:
        data = in_fresh_process(make_data, workdir, size, queries)
        out = workdir / f"negflow-{size}"
        n = measure("negflow-index", data, out)
        search = measure("negflow-search", data, out)
        n |= {k: v for k, v in search.items() if k.startswith("search")}
        n["rss"] = (n["peak_rss_mb"], search["peak_rss_mb"])
        b = measure("bm25s", data, workdir / f"bm25s-{size}")
        b["rss"] = (b["peak_rss_mb"],) * 2  # one process: its peak over both
        for side, r in (("negflow", n), ("bm25s", b)):
            print(
                f"{size:10,d} {side:>8s} {size / r['index']:13,.0f} {queries / r['search any']:15,.0f} "
                f"{queries / r['search content']:8,.0f} {r['rss'][0]:19,.0f} {r['rss'][1]:7,.0f}"
            )
        print(
            f"{size:10,d} negflow / bm25s: index time {n['index'] / b['index']:.2f}x, search time "
            f"{n['search any'] / b['search any']:.2f}x (content words "
            f"{n['search content'] / b['search content']:.2f}x), peak RSS {max(n['rss']) / b['peak_rss_mb']:.2f}x "
            f"(index {n['rss'][0] / b['peak_rss_mb']:.2f}x)"
        )


if __name__ == "__main__":
    main()
