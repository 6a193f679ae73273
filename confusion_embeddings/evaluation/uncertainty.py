"""How far a table can be trusted: intervals and stability from the bootstrap replicates.

Reads and writes nothing. From the point tables of M classifiers and their vectors refitted
on B bootstrap draws of the pictures (embedding/resampling.py), a replicate of the table is
the mean, over M classifiers drawn with replacement, of their replicate tables: it covers
which pictures were drawn and, with several classifiers, which classifiers were trained
(with one classifier, the pictures alone). From the B replicates:

  interval         per similarity, the central `evaluate.confidence` share of the replicates
                   (percentile interval); the report's ± is half its width
  nearest_share    per class, the share of replicates whose nearest class is the table's
  rank interval    per listed neighbour, the central share of its rank among the others
  reliability      table_reliability: the mean Spearman between two replicates' tables over
                   the class pairs the model confused (the pairs spearman_upper ranks). Two
                   replicates differ about as much as two tables made from two independent
                   draws of as many pictures (and classifiers), so this says how alike
                   another run of the study would rank the class pairs; 1 = the same order.
  picture / classifier part   the mean std of a similarity from resampling the pictures
                   alone, and the standard error of the mean over the classifiers

Where a class has no picture in a replicate its similarities are undefined there (NaN) and
the figures use the other replicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from confusion_embeddings.embedding.consensus import cosine_matrices


@dataclass(frozen=True)
class Uncertainty:
    replicates: int  # B
    confidence: float  # the intervals' coverage, e.g. 0.95
    low: np.ndarray  # [C, C] lower end of each similarity's interval (NaN: not computed)
    high: np.ndarray  # [C, C] upper end
    nearest: np.ndarray  # [C] the table's nearest class of each class
    nearest_share: np.ndarray  # [C] share of replicates that agree on it
    rank_low: np.ndarray  # [C, C] interval of neighbour j's rank among class i's (1 = nearest)
    rank_high: np.ndarray  # [C, C]; 0 where not computed
    reliability: float | None  # table_reliability (module docstring)
    picture_part: float  # mean std of a similarity, pictures resampled, classifiers fixed
    classifier_part: float | None  # mean standard error over classifiers (None for one)
    pairs: tuple[np.ndarray, np.ndarray]  # (rows, cols) of the class pairs in `tables`
    tables: np.ndarray  # float32 [B, Q] the replicates' similarities on those pairs
    listed: int  # neighbours per class the report and the table list

    @property
    def half_width(self) -> np.ndarray:
        return (self.high - self.low) / 2

    @property
    def dominant(self) -> str:
        """Which source the spread mostly comes from."""
        if self.classifier_part is None or self.picture_part >= self.classifier_part:
            return "pictures"
        return "classifiers"


def replicate_tables(
    replicate_vectors: np.ndarray, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each replicate b, (two-level table: the mean over M classifiers drawn with
    replacement, picture-only table: the mean over all M), each [C, C]; yields per b."""
    m = replicate_vectors.shape[0]
    for b in range(replicate_vectors.shape[1]):
        per_classifier = cosine_matrices(replicate_vectors[:, b])  # [M, C, C]
        drawn = rng.integers(0, m, m) if m > 1 else np.zeros(1, int)
        yield per_classifier[drawn].mean(axis=0), per_classifier.mean(axis=0)


def ranked_neighbours(table: np.ndarray, i: int) -> np.ndarray:
    """The other classes in descending similarity to class i (ties: lower index first)."""
    order = np.argsort(-table[i], kind="stable")
    return order[order != i]


def listed_entries(c: int, table: np.ndarray, listed: int) -> np.ndarray:
    """Bool [C, C]: the (class, neighbour) entries the report lists (`listed` nearest of
    each class under `table`; every other class when listed >= C - 1)."""
    mask = np.zeros((c, c), bool)
    for i in range(c):
        mask[i, ranked_neighbours(table, i)[:listed]] = True
    return mask


def kept_pairs(
    entries: np.ndarray, confused: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), i < j, of the class pairs whose replicates are kept (compare.py reads
    them): every pair where the report lists every neighbour (params
    `evaluate.all_pairs_max_classes`), else the listed and the confused pairs only."""
    c = entries.shape[0]
    if entries.sum(axis=1).min() >= c - 1:
        return np.triu_indices(c, k=1)
    upper = np.triu(entries | entries.T, k=1)
    upper[confused] = True
    return np.nonzero(upper)


def uncertainty(
    tables: np.ndarray,
    replicate_vectors: np.ndarray,
    listed: int,
    confused: tuple[np.ndarray, np.ndarray],
    confidence: float,
    seed: int,
) -> Uncertainty:
    """The figures of the module docstring. `tables` [M, C, C] the classifiers' point tables,
    `replicate_vectors` [M, B, C, dim], `listed` neighbours per class the report lists,
    `confused` the (rows, cols), i < j, of the class pairs the reliability ranks."""
    m, b_count = replicate_vectors.shape[:2]
    mean = tables.mean(axis=0)
    c = mean.shape[0]
    off = ~np.eye(c, dtype=bool)
    entries = listed_entries(c, mean, listed)
    rows, cols = np.nonzero(entries)
    pairs = kept_pairs(entries, confused)
    position = np.full((c, c), -1)
    position[pairs] = np.arange(pairs[0].size)
    among_kept = position[confused]
    nearest = np.array([ranked_neighbours(mean, i)[0] for i in range(c)])
    values = np.empty((b_count, rows.size))
    ranks = np.empty((b_count, rows.size), np.int32)
    agree, defined = np.zeros(c), np.zeros(c)
    kept = np.empty((b_count, pairs[0].size), np.float32)
    sum_p, sum_p2 = np.zeros((c, c)), np.zeros((c, c))
    rng = np.random.default_rng([seed, 1])
    for b, (table, picture_only) in enumerate(replicate_tables(replicate_vectors, rng)):
        values[b] = table[rows, cols]
        ranked = np.where(off, table, -np.inf)
        # rank of j in row i: 1 + how many others are more similar (NaN compares False)
        ranks[b] = 1 + (ranked[rows] > table[rows, cols][:, None]).sum(axis=1)
        ok = ~np.isnan(table).any(axis=1)
        defined += ok
        agree += ok & (np.nanargmax(np.where(np.isnan(ranked), -np.inf, ranked), axis=1) == nearest)
        kept[b] = table[pairs]
        sum_p += picture_only
        sum_p2 += picture_only**2
    low, high, rank_low, rank_high = _intervals(values, ranks, (rows, cols), c, confidence)
    var_p = sum_p2 / max(b_count, 1) - (sum_p / max(b_count, 1)) ** 2
    return Uncertainty(
        replicates=b_count,
        confidence=confidence,
        low=low,
        high=high,
        nearest=nearest,
        nearest_share=agree / np.maximum(defined, 1),
        rank_low=rank_low,
        rank_high=rank_high,
        reliability=replicate_agreement(kept[:, among_kept]),
        picture_part=float(np.sqrt(np.maximum(var_p, 0.0))[off].mean()),
        classifier_part=float((tables.std(axis=0, ddof=1) / np.sqrt(m))[off].mean())
        if m > 1
        else None,
        pairs=pairs,
        tables=kept,
        listed=listed,
    )


def _intervals(
    values: np.ndarray,
    ranks: np.ndarray,
    entries: tuple[np.ndarray, np.ndarray],
    c: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, rank_low, rank_high) [C, C]: the central `confidence` share of the
    replicates' similarities `values` and ranks `ranks` [B, E] at the listed `entries`
    (NaN and 0 elsewhere, and everywhere when there are no replicates)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.full((c, c), np.nan), np.full((c, c), np.nan)
    rank_low, rank_high = np.zeros((c, c), np.int32), np.zeros((c, c), np.int32)
    if len(values):
        low[entries] = np.nanpercentile(values, tail, axis=0)
        high[entries] = np.nanpercentile(values, 100 - tail, axis=0)
        rank_low[entries] = np.percentile(ranks, tail, axis=0, method="lower")
        rank_high[entries] = np.percentile(ranks, 100 - tail, axis=0, method="higher")
    return low, high, rank_low, rank_high


def replicate_agreement(kept: np.ndarray, other: np.ndarray | None = None) -> float | None:
    """Mean Spearman between replicate b of `kept` [B, Q] and replicate b + B/2 of it (two
    independent replicates), or replicate b of `other` when given (two tables' replicates,
    compare.py); None with fewer than two class pairs or replicates."""
    if other is None:
        half = kept.shape[0] // 2
        a, b = kept[:half], kept[half : 2 * half]
    else:
        a, b = kept, other
    rhos = [spearman_of(x, y) for x, y in zip(a, b, strict=True)]
    rhos = [r for r in rhos if r is not None]
    return float(np.mean(rhos)) if rhos else None


def spearman_of(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman over the entries both define; None with fewer than 3 or a constant side."""
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)
