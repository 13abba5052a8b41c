"""The storage layer: tokenized datasets written in worker processes, read as `datasets` reads them;
shard naming and ranges; embedding shards read as one matrix."""

from pathlib import Path

import numpy as np
import pytest

from negflow.prepare import prepare
from negflow.score import prepare_ce_pairs
from negflow.shards import parse_shard, shard_range
from negflow.store import ShardedEmbeddings, load_table


def test_load_table_reads_a_saved_dataset_as_datasets_does(tmp_path):
    import datasets

    rows = {"id": [f"d{i}" for i in range(10)], "length": list(range(10, 0, -1))}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    assert len(list((tmp_path / "ds").glob("*.arrow"))) == 3
    table = load_table(tmp_path / "ds", ["length", "id"])
    assert table.column_names == ["length", "id"]
    assert table.to_pydict() == {"length": rows["length"], "id": rows["id"]}


@pytest.mark.slow  # prepare's worker processes
def test_tokenizing_in_worker_processes_writes_the_same_bytes(staged, fixture_data, tiny_models, tmp_path, monkeypatch):
    """prepare and prepare_ce_pairs with three worker processes (several blocks each, written in order) write
    folders byte for byte equal to the single-process ones."""
    import negflow.store as store_module

    monkeypatch.setattr(store_module, "TOKENIZE_ROWS", 7)
    out, _ = staged
    args = [str(fixture_data[n]) for n in ("corpus", "queries", "qrels")] + [str(tiny_models["embedder"])]
    for workers in (1, 3):
        folder = tmp_path / str(workers)
        outputs = [str(folder / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
        prepare(*args, "query: ", None, 64, 1, True, 3, *outputs, workers=workers)
        inputs = [str(out / n) for n in ("candidates.parquet", "qrels.parquet", "corpus", "queries")]
        prepare_ce_pairs(*inputs, str(tiny_models["ce"]), 100, str(folder / "pairs"), workers=workers)

    def contents(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    single, parallel = contents(tmp_path / "1"), contents(tmp_path / "3")
    assert single == parallel and len([name for name in single if name.endswith(".arrow")]) == 4
    assert load_table(tmp_path / "3" / "corpus", ["id"]).num_rows == load_table(out / "corpus", ["id"]).num_rows


def test_shards_cover_every_row_once():
    rows = [list(shard_range(10, *parse_shard(f"{i}-of-3"))) for i in (1, 2, 3)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert parse_shard("2-of-8") == (1, 8)  # Snakemake's scatter items count from 1
    for bad in ("0-of-8", "9-of-8", "2of8"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_sharded_embeddings_take_across_shards(tmp_path):
    a, b = np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(6, 10, dtype=np.float32).reshape(2, 2)
    np.save(tmp_path / "10-of-10.npy", b)
    np.save(tmp_path / "9-of-10.npy", a)  # sorted by shard number, not by name
    emb = ShardedEmbeddings([str(tmp_path / "10-of-10.npy"), str(tmp_path / "9-of-10.npy")])
    assert len(emb) == 5
    np.testing.assert_array_equal(emb.take(np.array([4, 0, 3])), [[8, 9], [0, 1], [6, 7]])
    np.testing.assert_array_equal(np.concatenate(list(emb.chunks(2))), np.concatenate([a, b]))
