"""What a pairs dataset's qrels say (the grades rule read_pairs writes) and the policies for the negatives
its data gives. A module of its own: read_pairs writes these and the candidates (what selection reads)
read them, and a rule reruns when a library file it imports changes, so editing selection code must not
rerun read_pairs (and with it every embedding of a pairs dataset)."""

# Given negatives: the negatives a pairs dataset's data carries (a triplet's third item, `neg`, Tevatron's
# negative_passages). `pool`: corpus documents like any other; `keep`: listed first, before the mined ones,
# and counted towards num_negatives (`selection.select_query(given=)`); `drop`: not read.
GIVEN_NEGATIVE_POLICIES = ("pool", "keep", "drop")
# Only POSITIVE reaches min_positive_score (which must be 1 there); every other row is excluded from the
# query's candidates like any judged row.
POSITIVE = 1
GIVEN_NEGATIVE = 0  # a negative the data gave, kept (given_negatives: keep)
SAME_TEXT = -1  # the query's own text as a document: never a candidate, never listed
