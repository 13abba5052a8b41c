"""The offline demo set: real text, enough of it, and qrels that point at real ids."""

from negflow.demo import build_docstring_dataset


def test_demo_set_has_over_a_thousand_documents_and_consistent_qrels():
    data = build_docstring_dataset()
    doc_ids = [d["_id"] for d in data["corpus"]]
    query_ids = {q["_id"] for q in data["queries"]}
    assert len(doc_ids) >= 1000 and len(set(doc_ids)) == len(doc_ids)
    assert len(data["queries"]) >= 100
    assert {q for q, _, _ in data["qrels"]} == query_ids
    assert {d for _, d, _ in data["qrels"]} <= set(doc_ids)
    assert all(len(d["text"].split()) >= 8 for d in data["corpus"])


def test_demo_set_is_deterministic():
    assert build_docstring_dataset(max_docs=50) == build_docstring_dataset(max_docs=50)
