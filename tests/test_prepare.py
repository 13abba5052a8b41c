"""prepare's checks of the qrels against the corpus and queries: one line naming the file, raised before
the model loads (the model reference here is a folder that does not exist), nothing left behind."""

from pathlib import Path

import pytest

from negflow.errors import InputError
from negflow.prepare import prepare


def _qrels(fixture_data, tmp_path, edit) -> Path:
    lines = Path(fixture_data["qrels"]).read_text().splitlines()
    path = tmp_path / "qrels.tsv"
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def _first(lines, column):
    return lines[1].split("\t")[column]


CASES = {
    "unknown_doc_ids": (
        lambda lines: [*lines, f"{_first(lines, 0)}\tnot-a-doc\t1", f"{_first(lines, 0)}\talso-missing\t1"],
        ": 2 corpus ids not found (first: 'not-a-doc', 'also-missing')",
    ),
    "unknown_query_ids": (
        lambda lines: [*lines, f"nobody\t{_first(lines, 1)}\t1"],
        ": 1 query ids not found (first: 'nobody')",
    ),
    "no_positive": (
        lambda lines: [lines[0], *(line.rsplit("\t", 1)[0] + "\t0" for line in lines[1:])],
        ": no query has a positive (score >= 1); nothing to mine",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_qrels_that_do_not_match_stop_before_the_model_loads(fixture_data, tmp_path, case):
    edit, message = CASES[case]
    qrels = _qrels(fixture_data, tmp_path, edit)
    out = tmp_path / "out"
    outputs = [str(out / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
    with pytest.raises(InputError) as err:
        prepare(
            str(fixture_data["corpus"]),
            str(fixture_data["queries"]),
            str(qrels),
            str(tmp_path / "no-model"),  # loading it would fail with another message
            None,
            None,
            64,
            1,
            False,
            3,
            *outputs,
        )
    assert str(err.value) == f"{qrels}{message}"
    assert [p for p in out.rglob("*") if p.is_file()] == []
