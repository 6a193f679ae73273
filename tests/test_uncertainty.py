"""Resampling over pictures (embedding/resampling.py) and the figures drawn from it
(evaluation/uncertainty.py, the warnings in evaluation/scores.py): intervals that are never
zero by construction, that widen on fewer pictures, and the warnings a reader needs."""

from __future__ import annotations

import numpy as np
import pytest

import confusion_embeddings as ce
from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.embedding.resampling import (
    distinct_starts,
    draw_weights,
    resampled_counts,
)
from confusion_embeddings.evaluation.uncertainty import ranked_neighbours
from confusion_embeddings.pairs import count_matrix, make_pairs
from confusion_embeddings.predictions import predictions_from_arrays

from synthetic import LINKED_CLASSES as CLASSES
from synthetic import linked_predictions as planted
from synthetic import make_synthetic_predictions

C = len(CLASSES)
LINKS = {(0, 1): 1.5, (2, 3): 1.5, (4, 5): 1.0}


def test_resampled_counts_equal_counting_the_drawn_pictures():
    labels, probs = planted(LINKS, 30, 0)
    pairs = make_pairs(
        [("p", predictions_from_arrays({"labels": labels, "classes": CLASSES, "probs": probs}))],
        PairsConfig(top_k=3, block_size=64),
    )
    weights = draw_weights(np.random.default_rng(1), pairs.n_pictures, 4)
    assert (weights.sum(axis=1) == pairs.n_pictures).all()
    counts = resampled_counts(pairs, weights)
    for w, got in zip(weights, counts, strict=True):
        drawn = np.repeat(np.arange(pairs.n_pictures), w)
        rows = (drawn[:, None] * 3 + np.arange(3)).ravel()
        np.testing.assert_array_equal(got, count_matrix(pairs.true[rows], pairs.guess[rows], C))


def test_every_interval_is_wider_than_zero_and_the_report_says_what_it_covers():
    labels, probs = planted(LINKS, 150, 0)
    result = ce.embed_predictions(labels, CLASSES, probs=probs, bootstrap=50)
    off = ~np.eye(C, dtype=bool)
    assert (result.high - result.low)[off].min() > 0
    assert (result.low[off] <= result.high[off]).all()
    report = result.report()
    assert "± is half the width of a 95% bootstrap interval: 50 redraws of the pictures" in report
    assert " ± 0.00" not in report
    assert report.index("Table reliability") < report.index("## Summary")
    # The jax engine is deterministic given the counts: one run per classifier, no seed spread.
    assert result.runs.shape[1] == 1 and "seed_spread" not in result.metrics


def test_intervals_widen_on_fewer_pictures():
    labels, probs = planted(LINKS, 400, 0)
    many = ce.embed_predictions(labels, CLASSES, probs=probs, bootstrap=60)
    keep = np.concatenate([np.flatnonzero(labels == c)[:25] for c in range(C)])
    few = ce.embed_predictions(labels[keep], CLASSES, probs=probs[keep], bootstrap=60)
    assert few.metrics["interval_halfwidth"] > 1.5 * many.metrics["interval_halfwidth"]
    assert few.metrics["table_reliability"] < many.metrics["table_reliability"]


def test_the_seeds_of_the_jax_engine_are_restarts_and_the_refits_start_in_each_optimum():
    labels, probs = planted(LINKS, 100, 0)
    pred = predictions_from_arrays({"labels": labels, "classes": CLASSES, "probs": probs})
    pairs = make_pairs([("p", pred)], PairsConfig(top_k=3, block_size=4096))
    config = EmbedConfig()
    got = embed(pairs, config)
    restarts = got.restarts
    assert restarts.w_in.shape == (1, len(config.seeds), C, config.dim)
    best = int(np.argmin(restarts.loss[0]))
    np.testing.assert_array_equal(got.vectors[0, 0], restarts.w_in[0, best])
    one = type(restarts)(restarts.w_in[0], restarts.w_out[0], restarts.loss[0])
    starts = distinct_starts(one)
    assert starts[0] == best and len(set(starts)) == len(starts)


def flat_lower_guesses(n_per_class: int, seed: int):
    """Top-1 carries the planted confusions; the 2nd and 3rd guesses are drawn uniformly."""
    labels, probs = planted(LINKS, n_per_class, seed)
    rng = np.random.default_rng(seed + 1)
    top1 = probs.argmax(axis=1)
    topk = np.empty((labels.size, 3), np.int64)
    for i, first in enumerate(top1):
        rest = rng.permutation([c for c in range(C) if c != first])
        topk[i] = [first, *rest[:2]]
    return labels, topk


def test_flat_lower_guesses_are_flagged_and_structured_ones_are_not():
    labels, topk = flat_lower_guesses(300, 0)
    flat = ce.embed_predictions(labels, CLASSES, topk=topk, bootstrap=10)
    assert flat.metrics["flat_guesses"] is True
    (line,) = [w for w in flat.warnings if w.startswith("no structure in the lower guesses")]
    assert "pairs.top_k: 1, or calibrated probabilities" in line
    # Confusions within groups, as CIFAR-10's animals and vehicles: the lower guesses name
    # the same groups as the mistakes (secondary_vs_confusion reads that structure).
    groups = {"g0": CLASSES[:4], "g1": CLASSES[4:]}
    arrays = make_synthetic_predictions(300, CLASSES, groups, confusion_strength=1.0, seed=0)
    structured = ce.embed_predictions(
        arrays["labels"], CLASSES, probs=arrays["probs"], bootstrap=10
    )
    assert structured.metrics["flat_guesses"] is False
    assert structured.metrics["secondary_vs_confusion"] > 0.5


def test_a_class_between_two_equally_near_classes_has_unstable_ranks():
    # c6 leans equally to c4 and c5: which of the two is "nearest" changes with the draw.
    links = {**LINKS, (6, 4): 1.2, (6, 5): 1.2}
    labels, probs = planted(links, 150, 3)
    result = ce.embed_predictions(labels, CLASSES, probs=probs, bootstrap=60)
    u = result.evaluation.uncertainty
    assert u.nearest_share[6] < 0.8
    assert 6 in result.evaluation.unstable_nearest
    (line,) = [w for w in result.warnings if w.startswith("unstable ranks")]
    assert "c6 -> " in line
    # The clear pairs hold in (nearly) every redraw.
    assert u.nearest_share[0] >= 0.95 and u.nearest_share[2] >= 0.95


@pytest.mark.parametrize("bad", [0, 1])
def test_bootstrap_needs_two_replicates(bad):
    labels, probs = planted(LINKS, 20, 0)
    with pytest.raises(PipelineError, match=rf"^embed_predictions\(bootstrap={bad}\) is out"):
        ce.embed_predictions(labels, CLASSES, probs=probs, bootstrap=bad)


def test_ranked_neighbours_descending_ties_by_index():
    mean = np.array([[1.0, 0.2, 0.9, 0.2], [0.2, 1, 0, 0], [0.9, 0, 1, 0], [0.2, 0, 0, 1]])
    np.testing.assert_array_equal(ranked_neighbours(mean, 0), [2, 1, 3])
    np.testing.assert_array_equal(ranked_neighbours(mean, 3), [0, 1, 2])
