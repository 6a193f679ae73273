"""Tests of confusion_embeddings/evaluation/caveats.py: why a table is called collapsed, and
the lower-ranked guesses named for any k."""

from __future__ import annotations

from confusion_embeddings.evaluation.caveats import collapse_reasons, flat_guesses_reason, ordinal

from helpers import eval_params


def test_collapse_reasons_name_each_criterion():
    params = eval_params()
    assert collapse_reasons(0.9, 0.3, params) == ()
    assert collapse_reasons(None, 0.3, params) == ()  # no Spearman (constant input): no verdict
    (reason,) = collapse_reasons(0.1, 0.3, params)
    assert "collapse_threshold" in reason
    assert len(collapse_reasons(0.1, 0.9, params)) == 2


def test_ordinals_and_the_lower_guesses_named_for_any_k():
    expected = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 10: "10th", 11: "11th", 12: "12th"}
    expected |= {13: "13th", 21: "21st", 22: "22nd", 23: "23rd", 101: "101st", 111: "111th"}
    assert {n: ordinal(n) for n in expected} == expected
    params = eval_params()
    for k, words in ((2, "the 2nd guesses"), (3, "the 2nd to 3rd guesses"), (22, "to 22nd")):
        line = flat_guesses_reason(0.0, k, params)
        assert words in line and "-th" not in line, line
