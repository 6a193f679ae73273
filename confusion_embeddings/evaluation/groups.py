"""Class groups (CIFAR-10's animals and vehicles, CIFAR-100's superclasses) against the table.

Reads and writes nothing. Group figures use only classes that belong to a group, and need
>= 2 groups (else None): separation = mean within-group similarity - mean across-group
similarity; nn agreement = fraction of classes whose most similar class is in their group;
ARI = adjusted Rand index of an average-linkage clustering on 1 - cosine, cut at the number
of groups.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.special import comb

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.predictions import check_groups


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
