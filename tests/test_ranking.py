"""Tests of confusion_embeddings/evaluation/ranking.py: the mean and spread over seeds, the
rank correlation against the confusions, and the agreement of several classifiers' tables."""

from __future__ import annotations

import numpy as np
import pytest

from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.evaluation.ranking import seed_mean_std, spearman_upper, table_agreement


def test_seed_mean_and_std_on_hand_made_vectors():
    # seed 0: class 1 at 0 degrees from class 0; seed 1: at 90 degrees. Class 2 opposite class 0.
    vectors = np.array([[[1, 0], [2, 0], [-1, 0]], [[1, 0], [0, 3], [-1, 0]]], dtype=np.float32)
    sims = cosine_matrices(vectors)
    np.testing.assert_allclose(sims[0], [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)
    mean, std = seed_mean_std(sims)
    assert mean[0, 1] == pytest.approx(0.5) and std[0, 1] == pytest.approx(0.5)  # ddof=0
    assert mean[0, 2] == pytest.approx(-1.0) and std[0, 2] == pytest.approx(0.0)
    assert mean[1, 2] == pytest.approx(-0.5)
    np.testing.assert_allclose(np.diag(mean), 1.0)


def test_spearman_ignores_pairs_never_confused():
    # Three confused pairs ranked like the embedding, plus many unseen pairs (confusion 0)
    # whose embedding similarity is arbitrary: they must not drag the correlation down.
    rng = np.random.default_rng(0)
    emb = rng.uniform(-1, 1, (12, 12))
    emb = (emb + emb.T) / 2
    conf = np.zeros((12, 12))
    for (i, j), v in zip([(0, 1), (2, 3), (4, 5)], [0.3, 0.2, 0.1], strict=True):
        conf[i, j] = conf[j, i] = v
        emb[i, j] = emb[j, i] = 2 + v  # the embedding ranks them in the same order
    assert spearman_upper(emb, conf) == pytest.approx(1.0)
    assert spearman_upper(emb, np.zeros((12, 12))) is None


def test_spearman_keeps_only_the_most_confused_pairs():
    # Two informative pairs ranked like the embedding, plus ten rarely confused pairs whose
    # embedding order is reversed: noise that max_pairs drops.
    emb, conf = np.zeros((8, 8)), np.zeros((8, 8))
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    for rank, (i, j) in enumerate(pairs):
        strong = rank < 3
        conf[i, j] = conf[j, i] = (10.0 - rank) if strong else 0.01 * (1 + rank)
        emb[i, j] = emb[j, i] = (10.0 - rank) if strong else -0.01 * (1 + rank)
    assert spearman_upper(emb, conf, max_pairs=3) == pytest.approx(1.0)
    assert spearman_upper(emb, conf) < 0.5


def test_table_agreement_identical_and_shuffled():
    rng = np.random.default_rng(0)
    c = 8
    base = rng.uniform(-1, 1, (c, c))
    base = (base + base.T) / 2
    np.fill_diagonal(base, 1.0)
    assert table_agreement(np.stack([base, base, base])) == pytest.approx(1.0)
    assert table_agreement(base[None]) is None  # one classifier: nothing to agree with
    # A table whose class pairs are shuffled ranks them otherwise.
    iu = np.triu_indices(c, k=1)
    shuffled = np.eye(c)
    shuffled[iu] = rng.permutation(base[iu])
    shuffled = shuffled + np.triu(shuffled, 1).T
    two = table_agreement(np.stack([base, shuffled]))
    assert two < 0.5
    # The mean over pairs of tables: (1 + r + r) / 3 for base, base, shuffled.
    assert table_agreement(np.stack([base, base, shuffled])) == pytest.approx((1 + 2 * two) / 3)
    # Only the ranking counts: a monotone transform of a table agrees fully.
    assert table_agreement(np.stack([base, 0.5 * base**3 + 0.1])) == pytest.approx(1.0)
