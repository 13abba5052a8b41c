"""`negflow.mine_hard_negatives` beside sentence-transformers' own function on the same data and model: the
same columns and row structure for every output format, and a second call that reruns only the export."""

import inspect
import json
import time

import pytest
from conftest import REPO, read_jsonl

import negflow
from negflow.config import known_keys, load_schema
from negflow.dropin import ST_FORMATS, ST_SETTINGS

pytestmark = pytest.mark.slow  # runs Snakemake

# the tiny random-init model's cosines cluster: turn off negflow's doc-doc filters (see conftest.dataset_block)
NO_DOC_FILTERS = {"positive_doc_margin": None, "dup_threshold": None, "embedding_dtype": "fp32"}


def test_each_argument_it_maps_is_sentence_transformers_own_and_sets_a_known_setting():
    from sentence_transformers.util import mine_hard_negatives

    ours = inspect.signature(negflow.mine_hard_negatives).parameters
    theirs = inspect.signature(mine_hard_negatives).parameters
    settings = known_keys(load_schema(REPO / "config" / "schema.yaml"))
    for argument, setting in ST_SETTINGS.items():
        assert ours[argument].default == theirs[argument].default, argument
        assert setting in settings, setting


@pytest.fixture(scope="module")
def pairs(fixture_data):
    """The fixture's positives as a Dataset with its own column names, and its corpus texts."""
    import datasets

    text = {d["_id"]: d["text"] for d in read_jsonl(fixture_data["corpus"])}
    query_text = {q["_id"]: q["text"] for q in read_jsonl(fixture_data["queries"])}
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    rows = [(query_text[q], text[d]) for q, d, s in qrels if int(s) >= 1]
    dataset = datasets.Dataset.from_dict({"question": [q for q, _ in rows], "answer": [d for _, d in rows]})
    return dataset, list(text.values())


def structure(mined, fmt: str, scores: bool, dataset) -> list:
    """What every row of a format must look like, whoever mined it; returns a summary to compare."""
    pairs = set(zip(dataset["question"], dataset["answer"], strict=True))
    rows = mined.to_list()
    for row in rows:
        if fmt in ("triplet", "n-tuple"):
            assert (row["question"], row["answer"]) in pairs
            negatives = [row["negative"]] if fmt == "triplet" else [row[f"negative_{k}"] for k in (1, 2)]
            assert row["answer"] not in negatives
            assert not scores or len(row["scores"]) == 1 + len(negatives)
        elif fmt == "labeled-pair":
            assert (row["score"] if scores else row["label"]) is not None
        else:
            assert (row["question"], row["answer"][0]) in pairs
            assert row["labels" if not scores else "scores"][0] is not None and len(row["answer"]) >= 2
            assert scores or row["labels"] == [1] + [0] * (len(row["answer"]) - 1)
    if fmt == "labeled-pair" and not scores:
        assert {r["label"] for r in rows} == {0, 1}
    return sorted(mined.column_names)


def test_dropin_returns_the_columns_of_sentence_transformers_and_reruns_only_the_export(
    pairs, tiny_models, tmp_path, capsys
):
    """...and with verbose it shows the jobs it runs, as negflow mine does (here off a terminal, as in a
    notebook: plain lines through Python's stdout); without, nothing."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    dataset, corpus = pairs
    model = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    cache = tmp_path / "cache"
    common = dict(corpus=corpus, num_negatives=2, relative_margin=0.0, verbose=False, cache_folder=str(cache))
    started = time.perf_counter()
    first = None
    for fmt in ST_FORMATS:
        for scores in (False, True):
            ours = negflow.mine_hard_negatives(
                dataset, model, output_format=fmt, output_scores=scores, **common, **NO_DOC_FILTERS
            )
            first = first or time.perf_counter() - started
            theirs = st_mine(
                dataset,
                model,
                corpus=corpus,
                num_negatives=2,
                relative_margin=0.0,
                output_format=fmt,
                output_scores=scores,
                verbose=False,
            )
            assert ours.column_names == theirs.column_names, (fmt, scores)
            assert ours.features == theirs.features, (fmt, scores)
            assert structure(ours, fmt, scores, dataset) == structure(theirs, fmt, scores, dataset)
            assert ours.num_rows > 0
    assert len(list((cache / "models").iterdir())) == 1  # the loaded model was saved once, then found by its hash

    embedded = (cache / "results/dataset/embed/corpus/1-of-1.npy").stat().st_mtime_ns
    negatives = (cache / "results/dataset/negatives.jsonl").read_text()
    assert capsys.readouterr().out == ""  # verbose=False
    started = time.perf_counter()
    again = negflow.mine_hard_negatives(
        dataset, model, output_format="n-tuple", **{**common, "relative_margin": 0.5, "verbose": True}, **NO_DOC_FILTERS
    )
    second = time.perf_counter() - started
    shown = capsys.readouterr().out.splitlines()
    assert "▶ export_negatives dataset" in shown and "▶ export_sentence_transformers dataset n-tuple" in shown
    assert any(line.startswith("✓ export_negatives dataset (") for line in shown)
    assert not [line for line in shown if line.startswith("▶ embed")] and "\x1b" not in "".join(shown)
    assert (cache / "results/dataset/embed/corpus/1-of-1.npy").stat().st_mtime_ns == embedded
    assert (cache / "results/dataset/negatives.jsonl").read_text() != negatives
    assert json.loads((cache / "results/dataset/selection.json").read_text())["settings"]["relative_margin"] == 0.5
    assert again.column_names == ["question", "answer", "negative_1", "negative_2"]  # rows: none survive 0.5
    print(
        f"first call {first:.1f} s (every stage), second call with a new relative_margin {second:.1f} s (export only)"
    )
    auto = negflow.mine_hard_negatives(
        dataset, model, output_format="n-tuple", selection="auto", fn_budget=0.1, **common, **NO_DOC_FILTERS
    )
    assert (cache / "results/dataset/embed/corpus/1-of-1.npy").stat().st_mtime_ns == embedded
    calibration = json.loads((cache / "results/dataset/calibrate/calibration.json").read_text())
    assert calibration["budget"] == 0.1
    chosen = json.loads((cache / "results/dataset/selection.json").read_text())["calibration"]
    assert chosen["reason"] == calibration["choice"]["reason"]
    assert auto.column_names == ["question", "answer", "negative_1", "negative_2"]


def test_dropin_rescores_with_a_loaded_cross_encoder(pairs, tiny_models, tmp_path):
    """A loaded CrossEncoder is saved into the cache and scores the candidates: the score columns hold its
    scores (a 1-label CE's sigmoid, in (0, 1)), in sentence-transformers' columns."""
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    dataset, corpus = pairs
    ce = CrossEncoder(str(tiny_models["ce"]), device="cpu", max_length=128)
    args = dict(corpus=corpus, cross_encoder=ce, num_negatives=2, output_format="labeled-pair", output_scores=True)
    ours = negflow.mine_hard_negatives(
        dataset, str(tiny_models["embedder"]), **args, verbose=False, cache_folder=str(tmp_path), **NO_DOC_FILTERS
    )
    embedder = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    theirs = st_mine(dataset, embedder, **args, verbose=False)
    assert ours.column_names == theirs.column_names == ["question", "answer", "score"]
    assert ours.features == theirs.features and ours.num_rows > len(dataset)
    assert all(0.0 < score < 1.0 for score in ours["score"])
    (saved,) = (tmp_path / "models").iterdir()
    sidecar = json.loads((tmp_path / "results/dataset/negatives.provenance.json").read_text())
    assert saved.name.startswith("ce-") and sidecar["settings"]["ce"] == str(saved)


def test_dropin_refuses_what_has_no_counterpart(pairs, tiny_models):
    dataset, _ = pairs
    with pytest.raises(ValueError, match="include_positives has no counterpart in negflow"):
        negflow.mine_hard_negatives(dataset, str(tiny_models["embedder"]), include_positives=True)
    with pytest.raises(ValueError, match="Invalid output_format: quadruplet"):
        negflow.mine_hard_negatives(dataset, str(tiny_models["embedder"]), output_format="quadruplet")
    for name in (".", "..", "../elsewhere"):
        with pytest.raises(ValueError, match="name: dataset names use letters, digits"):
            negflow.mine_hard_negatives(dataset, str(tiny_models["embedder"]), name=name, cache_folder=None)
