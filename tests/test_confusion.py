"""Tests of confusion_embeddings/evaluation/confusion.py: the confusion matrices, the test
pictures and their top-1 accuracy, and what the lower-ranked guesses say on their own."""

from __future__ import annotations

import numpy as np
import pytest

from confusion_embeddings.evaluation.confusion import (
    confusion_counts,
    confusion_similarity,
    on_test_split,
    secondary_structure,
    top1_accuracy,
)

from helpers import eval_params
from synthetic import (
    SECONDARY_CLASSES,
    SECONDARY_GROUPS,
    hand_pairs,
    make_synthetic_predictions,
    pairs_of,
    random_lower_guesses,
    secondary_arrays,
)


def test_confusion_matrices_hand_made():
    # 3 pictures, top-2: (a: a, b), (b: a, c), (c: c, b)
    p = hand_pairs([0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 2, 1], 2, "abc")
    np.testing.assert_array_equal(confusion_counts(p), [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    sim = confusion_similarity(p)
    # rates: a->b 1, b->a 1, b->c 1, c->b 1, others 0 (one picture per class)
    np.testing.assert_allclose(sim, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def test_test_pictures_and_top1_accuracy_without_a_test_split():
    p = hand_pairs([0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 2, 1], 2, "abc")
    assert on_test_split(p).all()  # no test split: every picture
    assert top1_accuracy(p) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_secondary_structure_follows_planted_lower_guesses(tmp_path, seed):
    max_pairs = len(SECONDARY_CLASSES) * eval_params().top_n
    arrays = secondary_arrays(seed)
    planted = pairs_of(tmp_path, arrays)
    assert 0.85 < top1_accuracy(planted) < 0.97
    assert secondary_structure(planted, max_pairs) > 0.5
    flat = pairs_of(tmp_path, random_lower_guesses(arrays, seed), "flat")
    np.testing.assert_array_equal(flat.guess[flat.rank == 1], planted.guess[planted.rank == 1])
    assert abs(secondary_structure(flat, max_pairs)) < 0.3


def test_secondary_structure_ignores_top1_mistakes_for_a_weaker_classifier(tmp_path):
    """Random lower-ranked guesses of a classifier right only ~63% of the time: still no
    order among its wrong classes beyond the top-1, so near zero."""
    max_pairs = len(SECONDARY_CLASSES) * eval_params().top_n
    for seed in (0, 1):
        arrays = make_synthetic_predictions(
            1500, SECONDARY_CLASSES, SECONDARY_GROUPS, 1.5, seed=seed, true_bonus=3.0
        )
        flat = pairs_of(tmp_path, random_lower_guesses(arrays, seed), "flat")
        assert abs(secondary_structure(flat, max_pairs)) < 0.3
