"""Per-picture new-or-known scores that need a classifier's whole output, not just its top-k
guesses: computed where the pairs are made (pairs.build_pairs), from the predictions file.

Reads one predictions file (predictions.py) block by block, twice; writes nothing. Only
where the file names unseen classes (a new-or-known question to answer). Higher = more
likely new. With z the picture's scores over the known classes, centred (z - mean z): for a
`logits` file the logits, for a `probs` file the log-probabilities, which are the logits up
to each picture's own constant, so centring makes the two the same.

  max_logit            -max_j logit_j (Hendrycks et al. 2022); logits only
  energy               -logsumexp_j logit_j (Liu et al. 2020); logits only
  mahalanobis          min over the known classes k of (z - mu_k)' S^-1 (z - mu_k): how far
                       the whole ranking of the guesses is from the typical ranking of each
                       known class, mu_k the mean z of its training pictures and S the
                       covariance within the classes (Lee et al. 2018, on the output layer)
  relative_mahalanobis mahalanobis less the same distance to all known training pictures
                       as one Gaussian (Ren et al. 2021): a picture unusual in every way
                       (blurred, dark) is not new for that alone

mu and S are fitted on the training pictures of the known classes only (the split named
"train"; the labels say which pictures are of a known class): nothing is learned from a
picture of an unseen class, in any split (tests/test_novelty.py plants one to show it).
Without a "train" split, or for a `topk` file, the learned scores are NaN; so are the logit
scores for a `probs` file.
"""

from __future__ import annotations

import numpy as np

from confusion_embeddings.predictions import Predictions

FROM_LOGITS = ("max_logit", "energy")
LEARNED = ("mahalanobis", "relative_mahalanobis")
SCORES = FROM_LOGITS + LEARNED
TRAIN_SPLIT = "train"
# Below this a probability's log is taken at this value (float32 probabilities underflow to 0
# for logit gaps above ~100): the centred scores of such a picture stay finite.
TINY = 1e-37
# Added to the covariance's diagonal: keeps S invertible when a class's scores move together.
RIDGE = 1e-6


def centred(block: np.ndarray, kind: str, known: list[int]) -> np.ndarray:
    """[rows, K] float64: each row's scores over the known classes, less their mean."""
    x = block[:, known].astype(np.float64)
    if kind == "probs":
        x = np.log(np.maximum(x, TINY))
    return x - x.mean(axis=1, keepdims=True)


class _Moments:
    """Running sums for the class means and the within-class and total covariance."""

    def __init__(self, k: int) -> None:
        self.count = np.zeros(k)
        self.sum = np.zeros((k, k))
        self.outer = np.zeros((k, k))

    def add(self, z: np.ndarray, cls: np.ndarray) -> None:
        np.add.at(self.count, cls, 1)
        np.add.at(self.sum, cls, z)
        self.outer += z.T @ z

    def fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(class means [K, K], within-class precision, overall mean, overall precision), or
        None where a known class has no training picture."""
        if (self.count == 0).any():
            return None
        n, k = self.count.sum(), len(self.count)
        means = self.sum / self.count[:, None]
        within = (self.outer - (self.count[:, None] * means).T @ means) / n
        overall = self.sum.sum(axis=0) / n
        total = self.outer / n - np.outer(overall, overall)
        ridge = RIDGE * np.eye(k)
        return means, np.linalg.pinv(within + ridge), overall, np.linalg.pinv(total + ridge)


def _squared_distance(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = z - mean
    return np.einsum("ni,ij,nj->n", d, precision, d)


def _nearest_squared_distance(z: np.ndarray, means: np.ndarray, precision: np.ndarray):
    """min over the class means m of (z - m)' P (z - m), expanded as z'Pz - 2 z'Pm + m'Pm so
    that the cost is two matrix products whatever the number of classes."""
    zp = z @ precision
    own = np.einsum("ni,ni->n", zp, z)
    cross = zp @ means.T  # [rows, classes]
    centre = np.einsum("ki,ij,kj->k", means, precision, means)
    return np.maximum(own[:, None] - 2 * cross + centre[None, :], 0.0).min(axis=1)


def fit(pred: Predictions, block_size: int) -> tuple | None:
    """The learned scores' statistics from the known classes' training pictures, or None
    where the file has no "train" split (or no training picture of some known class)."""
    if TRAIN_SPLIT not in pred.splits or pred.split is None:
        return None
    train = pred.splits.index(TRAIN_SPLIT)
    known = pred.known_ids
    index_of = np.full(pred.n_classes, -1)
    index_of[known] = np.arange(len(known))
    moments = _Moments(len(known))
    start = 0
    for block in pred.blocks(block_size):
        rows = slice(start, start + len(block))
        cls = index_of[pred.labels[rows]]
        use = (pred.split[rows] == train) & (cls >= 0)  # known classes' training pictures only
        if use.any():
            moments.add(centred(block[use], pred.kind, known), cls[use])
        start += len(block)
    return moments.fitted()


def picture_scores(pred: Predictions, block_size: int) -> dict[str, np.ndarray] | None:
    """{score: float32 [N]} for every picture of a file with unseen classes (module
    docstring), NaN where a score cannot be computed from this file; None for a file
    without unseen classes or of top-k guesses only."""
    if not pred.unseen or pred.kind == "topk":
        return None
    stats = fit(pred, block_size)
    known = pred.known_ids
    out = {name: np.full(pred.n, np.nan, np.float32) for name in SCORES}
    start = 0
    for block in pred.blocks(block_size):
        rows = slice(start, start + len(block))
        if pred.kind == "logits":
            logits = block[:, known].astype(np.float64)
            top = logits.max(axis=1)
            out["max_logit"][rows] = -top
            out["energy"][rows] = -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))
        if stats is not None:
            means, within, overall, total = stats
            z = centred(block, pred.kind, known)
            nearest = _nearest_squared_distance(z, means, within)
            out["mahalanobis"][rows] = nearest
            out["relative_mahalanobis"][rows] = nearest - _squared_distance(z, overall, total)
        start += len(block)
    return out
