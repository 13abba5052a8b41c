"""Mining rounds: round r >= 2 fine-tunes a model on round r-1's negatives and mines again with it.

Each round runs as a dataset of its own, `NAME/rounds/R` (its files under results/NAME/rounds/R/), whose
embedding model is the model its round trained (round 1: the configured one); every round reads the
prepared texts of NAME, so the corpus is read and tokenized once. NAME's negatives, selection report and
audit are copies of the last round's (`rounded_pattern`), and its training files and report read the last
round's mining files (`mined_by`), so the dataset's usual outputs hold the last round's negatives.
"""

from __future__ import annotations

import re

from negflow import layout


def round_dataset(dataset: str, round_number: int) -> str:
    return f"{dataset}/rounds/{round_number}"


def round_datasets(datasets: dict[str, dict]) -> dict[str, dict]:
    """A dataset per round of every dataset configured with `rounds` >= 2: its settings, with round r's
    model as the embedding model from round 2 on."""
    derived = {}
    for name, settings in datasets.items():
        if settings["rounds"] < 2:
            continue
        for r in range(1, settings["rounds"] + 1):
            own = round_dataset(name, r)
            model = {} if r == 1 else {"embedding": round_model(name, r), "embedding_revision": None}
            base = {key: settings[key] for key in ("embedding", "embedding_revision")}
            derived[own] = settings | model | {"round": r, "round_of": name, "round_base_model": base}
    return derived


def round_model(dataset: str, round_number: int) -> str:
    """The folder of the model round `round_number` (>= 2) of `dataset` trains and mines with."""
    return layout.run_file(layout.train_round.model, round_dataset(dataset, round_number))


def prepared_by(datasets: dict[str, dict], name: str) -> str:
    """The dataset whose prepared texts `name` reads: a round reads its dataset's."""
    return datasets[name].get("round_of", name)


def mined_by(datasets: dict[str, dict], name: str) -> str:
    """The dataset whose mining files (embeddings, candidates, scores) `name` selects from: a dataset with
    rounds selects from its last round; every other dataset, and every round, from its own."""
    settings = datasets[name]
    if "round" not in settings and settings["rounds"] > 1:
        return round_dataset(name, settings["rounds"])
    return name


def training_start(datasets: dict[str, dict], name: str) -> dict[str, str | None]:
    """The model round `name` (a round >= 2) starts training from, as `embedding` and its revision: the
    previous round's model under `round_training: continue` (round 1's is the configured one), the
    configured one under `restart`."""
    settings = datasets[name]
    base, previous = settings["round_of"], settings["round"] - 1
    if settings["round_training"] == "continue" and previous >= 2:
        return {"embedding": round_model(base, previous), "embedding_revision": None}
    return {key: datasets[base][key] for key in ("embedding", "embedding_revision")}


def rounded_pattern(datasets: dict[str, dict]) -> str:
    """A regular expression matching exactly the names of the datasets configured with rounds (not their
    rounds'): the datasets whose own negatives and audit are copies of their last round's. It matches
    nothing where no dataset has rounds."""
    names = sorted(name for name, settings in datasets.items() if settings["rounds"] > 1 and "round_of" not in settings)
    return "|".join(re.escape(name) for name in names) or "(?!)"
