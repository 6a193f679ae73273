"""What the pairs say on their own, before any embedding: confusion counts and rates.

Reads and writes nothing. Confusion similarity of classes a, b: R[a, b] = fraction of a's
pictures that have b among their top-k guesses (the very pairs word2vec trains on),
symmetrised (R + R^T) / 2.
"""

from __future__ import annotations

import numpy as np

from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.evaluation.ranking import spearman_upper
from confusion_embeddings.pairs import Pairs, count_matrix


def confusion_counts(pairs: Pairs) -> np.ndarray:
    """Top-1 confusion matrix: [actual, predicted] picture counts."""
    top1 = pairs.rank == 1
    return count_matrix(pairs.true[top1], pairs.guess[top1], pairs.n_classes)


def confusion_similarity(pairs: Pairs) -> np.ndarray:
    """Symmetrised rate at which a's pictures list b among their top-k guesses (diag 0)."""
    c = pairs.n_classes
    cooc = count_matrix(pairs.true, pairs.guess, c)
    pictures = np.bincount(pairs.true, minlength=c) / pairs.top_k
    rate = cooc / np.maximum(pictures, 1)[:, None]
    sym = (rate + rate.T) / 2
    np.fill_diagonal(sym, 0.0)
    return sym


def on_test_split(pairs: Pairs) -> np.ndarray:
    """Mask of the pairs of test-split pictures (all pairs when there is no test split)."""
    if "test" not in pairs.splits:
        return np.ones(len(pairs.true), bool)
    return pairs.split == pairs.splits.index("test")


def of_known_classes(pairs: Pairs) -> np.ndarray:
    """Mask of the pairs whose true class the classifier was trained on: a class it never saw
    (pairs.unseen) can never be guessed, so its pictures are neither right nor a mistake."""
    return ~np.isin(pairs.true, pairs.unseen_ids)


def top1_accuracy(pairs: Pairs) -> float | None:
    """Top-1 accuracy on the known classes' test pictures (all of them without a test
    split)."""
    first = (pairs.rank == 1) & on_test_split(pairs) & of_known_classes(pairs)
    return float((pairs.true[first] == pairs.guess[first]).mean()) if first.any() else None


def secondary_structure(pairs: Pairs, max_pairs: int | None = None) -> float | None:
    """What a classifier's lower-ranked guesses say on their own: Spearman, over the class
    pairs, between the cosine of the classes' rows of the rank >= 2 pair counts and the
    classifier's own top-1 mistakes on the test pictures (symmetrised rates). Near 0 when
    the wrong classes' scores carry no order (label smoothing flattens them); one
    classifier's pairs. Only pictures whose top-1 guess is right count: elsewhere the top-1
    mistake is the one class the lower ranks cannot name, which would leak its structure in.
    With unseen classes, over the known classes alone: an unseen class has no right
    guess and only mistakes, so its pairs would rank by nothing but that."""
    c, k = pairs.n_classes, pairs.top_k
    right = np.repeat(pairs.guess[::k] == pairs.true[::k], k)
    low = (pairs.rank >= 2) & right
    counts = count_matrix(pairs.true[low], pairs.guess[low], c).astype(np.float64)
    np.fill_diagonal(counts, 0.0)
    profile = cosine_matrices(counts)  # of the classes' rows
    first = (pairs.rank == 1) & on_test_split(pairs)
    mistakes = count_matrix(pairs.true[first], pairs.guess[first], c).astype(np.float64)
    np.fill_diagonal(mistakes, 0.0)
    rate = mistakes / np.maximum(np.bincount(pairs.true[first], minlength=c), 1)[:, None]
    rate = (rate + rate.T) / 2
    if pairs.unseen:
        known = np.setdiff1d(np.arange(c), pairs.unseen_ids)
        profile, rate = profile[np.ix_(known, known)], rate[np.ix_(known, known)]
    return spearman_upper(profile, rate, max_pairs)
