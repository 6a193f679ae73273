"""Rank statistics of similarity tables: how alike two tables order the class pairs.

Reads and writes nothing. The class pairs ranked are the unordered pairs i < j a reference
(the confusion rates) puts above zero, the most confused `max_pairs` of them when given
(spearman_upper says why).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import spearmanr


def spearman_upper(a: np.ndarray, b: np.ndarray, max_pairs: int | None = None) -> float | None:
    """Spearman correlation of a and b over the unordered class pairs i < j that the model
    confused (b > 0), keeping only the `max_pairs` most confused of them when given; None if
    fewer than two such pairs or either side is constant.

    Why not every pair: with many classes nearly all of the C(C-1)/2 pairs are confused
    rarely or never, their rates are noise (or a tie at zero), and they swamp the ranking of
    the pairs that carry information. evaluate passes max_pairs = C * top_n, the pairs a
    reader of the neighbour lists would see; with ten classes that is every pair.
    """
    pairs = ranked_pairs(b, max_pairs)
    x, y = a[pairs], b[pairs]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def ranked_pairs(b: np.ndarray, max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the class pairs i < j with b > 0, the `max_pairs` largest only when
    given: the pairs spearman_upper ranks."""
    rows, cols = np.triu_indices_from(b, k=1)
    y = b[rows, cols]
    keep = np.flatnonzero(y > 0)
    if max_pairs is not None and keep.size > max_pairs:
        keep = keep[np.argsort(-y[keep], kind="stable")[:max_pairs]]
    return rows[keep], cols[keep]


def seed_reliability(
    sims: np.ndarray, reference: np.ndarray, max_pairs: int | None = None
) -> float | None:
    """How reproducible one classifier's table is over word2vec seeds: Spearman, over the
    class pairs spearman_upper ranks against `reference`, between the mean table of the
    even-numbered seeds and that of the odd-numbered ones ([S, C, C]; None below 2 seeds).
    Low when the seed-to-seed noise is large against the differences the table ranks."""
    if len(sims) < 2:
        return None
    pairs = ranked_pairs(reference, max_pairs)
    x, y = sims[0::2].mean(axis=0)[pairs], sims[1::2].mean(axis=0)[pairs]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def table_agreement(tables: np.ndarray) -> float | None:
    """Mean pairwise Spearman correlation between [M, C, C] tables over the unordered class
    pairs: how alike independent classifiers rank the class pairs (None for one table)."""
    if len(tables) < 2:
        return None
    iu = np.triu_indices(tables.shape[1], k=1)
    rhos = [
        spearmanr(tables[a][iu], tables[b][iu]).statistic
        for a, b in itertools.combinations(range(len(tables)), 2)
    ]
    return float(np.mean(rhos))


def seed_mean_std(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0) over the seed axis."""
    return sims.mean(axis=0), sims.std(axis=0)


def mean_offdiag(mean: np.ndarray) -> float:
    return float(mean[~np.eye(len(mean), dtype=bool)].mean())
