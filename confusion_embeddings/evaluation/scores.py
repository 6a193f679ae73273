"""The figures of the evaluate stage: how well the class vectors reflect the confusions.

Reads and writes nothing. Definitions (on the seed-averaged cosine matrix unless said
otherwise):
  - cosine matrices are computed per seed, then averaged; std is the population std (ddof=0).
  - confusion similarity of classes a, b: R[a, b] = fraction of a's pictures that have b
    among their top-k guesses (the very pairs word2vec trains on), symmetrised (R + R^T) / 2.
  - spearman_vs_confusion: Spearman rank correlation of embedding and confusion similarity
    over the unordered class pairs (see spearman_upper).
  - group metrics use only classes that belong to a group, and need >= 2 groups (else None):
    separation = mean within-group similarity - mean across-group similarity; nn agreement =
    fraction of classes whose most similar class is in their group; ARI = adjusted Rand
    index of an average-linkage clustering on 1 - cosine, cut at the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.special import comb
from scipy.stats import spearmanr

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, at_least, in_range
from confusion_embeddings.pairs import Pairs
from confusion_embeddings.predictions import check_groups

SCHEMA = {
    # {group: [class names]} or null (then the predictions file's own `groups`, if any)
    "groups": Param(dict, None, nullable=True),
    "top_n": Param(int, 9, at_least(1)),
    "table_max_classes": Param(int, 20, at_least(1)),
    "collapse_threshold": Param(float, 0.2, in_range(-1.0, 1.0)),
    "collapse_mean_cosine": Param(float, 0.8, in_range(-1.0, 1.0)),
}


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    seeds: int
    dim: int
    mean: np.ndarray  # [C, C] cosine similarity averaged over seeds
    std: np.ndarray  # [C, C]
    confusion: np.ndarray  # [C, C] top-1 counts, actual x predicted
    confusion_sim: np.ndarray  # [C, C] symmetric, see module docstring
    spearman: float | None
    mean_offdiag: float
    collapse_reasons: tuple[str, ...]  # empty unless a collapse criterion fired
    groups: dict[str, list[str]] | None
    group_labels: np.ndarray  # [C] group index, -1 outside every group
    group_separation: float | None
    group_nn_agreement: float | None
    group_ari: float | None
    linkage: np.ndarray  # average linkage of all classes on 1 - mean
    leaf_order: np.ndarray  # [C]
    n_pictures: int
    top_k: int

    @property
    def collapsed(self) -> bool:
        return bool(self.collapse_reasons)


def cosine_matrices(vectors: np.ndarray) -> np.ndarray:
    """[S, C, dim] -> [S, C, C] cosine similarities, one matrix per seed."""
    v = vectors.astype(np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    return v @ np.swapaxes(v, -1, -2)


def seed_mean_std(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0) over the seed axis."""
    return sims.mean(axis=0), sims.std(axis=0)


def ranked_neighbours(mean: np.ndarray, i: int) -> np.ndarray:
    """The other classes in descending mean similarity to class i (ties: lower index first)."""
    order = np.argsort(-mean[i], kind="stable")
    return order[order != i]


def confusion_counts(pairs: Pairs) -> np.ndarray:
    """Top-1 confusion matrix: [actual, predicted] picture counts."""
    c = pairs.n_classes
    top1 = pairs.rank == 1
    flat = pairs.true[top1].astype(np.int64) * c + pairs.guess[top1]
    return np.bincount(flat, minlength=c * c).reshape(c, c)


def confusion_similarity(pairs: Pairs) -> np.ndarray:
    """Symmetrised rate at which a's pictures list b among their top-k guesses (diag 0)."""
    c = pairs.n_classes
    cooc = np.bincount(pairs.true.astype(np.int64) * c + pairs.guess, minlength=c * c).reshape(c, c)
    pictures = np.bincount(pairs.true, minlength=c) / pairs.top_k
    rate = cooc / np.maximum(pictures, 1)[:, None]
    sym = (rate + rate.T) / 2
    np.fill_diagonal(sym, 0.0)
    return sym


def spearman_upper(a: np.ndarray, b: np.ndarray, max_pairs: int | None = None) -> float | None:
    """Spearman correlation of a and b over the unordered class pairs i < j that the model
    confused (b > 0), keeping only the `max_pairs` most confused of them when given; None if
    fewer than two such pairs or either side is constant.

    Why not every pair: with many classes nearly all of the C(C-1)/2 pairs are confused
    rarely or never, their rates are noise (or a tie at zero), and they swamp the ranking of
    the pairs that carry information. evaluate passes max_pairs = C * top_n, the pairs a
    reader of the neighbour lists would see; with ten classes that is every pair.
    """
    iu = np.triu_indices_from(a, k=1)
    x, y = a[iu], b[iu]
    seen = y > 0
    x, y = x[seen], y[seen]
    if max_pairs is not None and y.size > max_pairs:
        keep = np.argsort(-y, kind="stable")[:max_pairs]
        x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def mean_offdiag(mean: np.ndarray) -> float:
    return float(mean[~np.eye(len(mean), dtype=bool)].mean())


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """ARI (Hubert & Arabie) from the contingency table; 1.0 when both are trivial."""
    _, a = np.unique(labels_a, return_inverse=True)
    _, b = np.unique(labels_b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)
    index = comb(table, 2).sum()
    rows, cols = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum()
    expected = rows * cols / comb(len(a), 2)
    best = (rows + cols) / 2
    if best == expected:  # both partitions trivial (all one cluster, or all singletons)
        return 1.0
    return float((index - expected) / (best - expected))


def resolve_groups(
    param_groups: dict | None, pairs_groups: dict | None, classes: tuple[str, ...]
) -> dict[str, list[str]] | None:
    """evaluate.groups if set, else the groups carried by the pairs (predictions) file."""
    if param_groups is None:
        return pairs_groups
    source = "params.yaml: 'evaluate.groups'"
    for group, members in param_groups.items():
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise PipelineError(
                f"{source}: group '{group}' must be a list of class names, got {members!r}"
            )
    groups = {str(g): list(m) for g, m in param_groups.items()}
    check_groups(source, groups, classes)
    return groups


def group_labels(groups: dict[str, list[str]] | None, classes: tuple[str, ...]) -> np.ndarray:
    labels = np.full(len(classes), -1)
    index = {name: i for i, name in enumerate(classes)}
    for g, members in enumerate((groups or {}).values()):
        labels[[index[m] for m in members]] = g
    return labels


def average_linkage(mean: np.ndarray) -> np.ndarray:
    dist = np.clip(1.0 - mean, 0.0, 2.0)
    dist = (dist + dist.T) / 2  # exact symmetry for squareform
    np.fill_diagonal(dist, 0.0)
    return hierarchy.linkage(squareform(dist, checks=False), method="average")


def group_scores(
    mean: np.ndarray, labels: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """(separation, nn agreement, ARI) over the grouped classes; Nones if < 2 groups."""
    inside = np.flatnonzero(labels >= 0)
    lab = labels[inside]
    n_groups = np.unique(lab).size
    if n_groups < 2:
        return None, None, None
    sub = mean[np.ix_(inside, inside)]
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(len(inside), dtype=bool)
    within = sub[same & off]
    separation = float(within.mean() - sub[~same].mean()) if within.size else None
    nearest = np.argmax(np.where(off, sub, -np.inf), axis=1)
    agreement = float((lab[nearest] == lab).mean())
    clusters = hierarchy.fcluster(average_linkage(sub), t=n_groups, criterion="maxclust")
    return separation, agreement, adjusted_rand_index(lab, clusters)


def collapse_reasons(spearman: float | None, offdiag: float, params: dict) -> tuple[str, ...]:
    """Which collapse criteria fire, each as a line for the warning and the report."""
    reasons = []
    if offdiag > params["collapse_mean_cosine"]:
        reasons.append(
            f"mean off-diagonal cosine {offdiag:.4f} > evaluate.collapse_mean_cosine "
            f"{params['collapse_mean_cosine']}: the classes point in nearly one direction; usual "
            "cause: too many updates for a small vocabulary on pairs sorted by class "
            "(embed.shuffle false with embed.sample 0, or many more epochs), see "
            "docs/design/embedding-engines.md"
        )
    if spearman is not None and spearman < params["collapse_threshold"]:
        reasons.append(
            f"Spearman vs confusion {spearman:.4f} < evaluate.collapse_threshold "
            f"{params['collapse_threshold']}: the similarities do not rank class pairs as the "
            "confusions do (with many classes, where most pairs' confusion rates are noise, "
            "check the group scores too)"
        )
    return tuple(reasons)


def classical_mds(dist: np.ndarray, dims: int = 2) -> np.ndarray:
    """Torgerson MDS: coordinates whose Euclidean distances approximate `dist`."""
    n = len(dist)
    centre = np.eye(n) - 1.0 / n
    b = -0.5 * centre @ (dist**2) @ centre
    values, vectors = np.linalg.eigh((b + b.T) / 2)
    top = np.argsort(values)[::-1][:dims]
    coords = vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))
    # An eigenvector's sign is arbitrary: fix it so reruns draw the same picture.
    signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])])
    return coords * np.where(signs == 0, 1.0, signs)


def evaluate(pairs: Pairs, vectors: np.ndarray, params: dict) -> Evaluation:
    """All figures of the stage from the pairs and the [S, C, dim] vectors."""
    mean, std = seed_mean_std(cosine_matrices(vectors))
    conf_sim = confusion_similarity(pairs)
    rho = spearman_upper(mean, conf_sim, max_pairs=len(pairs.classes) * params["top_n"])
    offdiag = mean_offdiag(mean)
    groups = resolve_groups(params["groups"], pairs.groups, pairs.classes)
    labels = group_labels(groups, pairs.classes)
    separation, agreement, ari = group_scores(mean, labels)
    link = average_linkage(mean)
    return Evaluation(
        classes=pairs.classes,
        seeds=vectors.shape[0],
        dim=vectors.shape[2],
        mean=mean,
        std=std,
        confusion=confusion_counts(pairs),
        confusion_sim=conf_sim,
        spearman=rho,
        mean_offdiag=offdiag,
        collapse_reasons=collapse_reasons(rho, offdiag, params),
        groups=groups,
        group_labels=labels,
        group_separation=separation,
        group_nn_agreement=agreement,
        group_ari=ari,
        linkage=link,
        leaf_order=hierarchy.leaves_list(link),
        n_pictures=pairs.n_pictures,
        top_k=pairs.top_k,
    )
