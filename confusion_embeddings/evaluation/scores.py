"""The figures of the evaluate stage: how well the class vectors reflect the confusions.

Reads and writes nothing. Definitions (on the seed-averaged cosine matrix unless said
otherwise):
  - cosine matrices are computed per run (gensim: per word2vec seed), then averaged; std is
    the population std (ddof=0). The intervals come from resampling (uncertainty.py).
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

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.special import comb
from scipy.stats import spearmanr

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, at_least, in_range
from confusion_embeddings.embedding.consensus import (
    Consensus,
    align_runs,
    cosine_matrices,
    spread_around,
)
from confusion_embeddings.evaluation.projection import ClassMap, class_map
from confusion_embeddings.evaluation.uncertainty import (
    KEEP_ALL_PAIRS_MAX_CLASSES,
    Uncertainty,
    uncertainty,
)
from confusion_embeddings.pairs import Pairs, count_matrix
from confusion_embeddings.predictions import check_groups

SCHEMA = {
    # {group: [class names]} or null (then the predictions file's own `groups`, if any)
    "groups": Param(dict, None, nullable=True),
    "top_n": Param(int, 9, at_least(1)),
    "table_max_classes": Param(int, 20, at_least(1)),
    "collapse_threshold": Param(float, 0.2, in_range(-1.0, 1.0)),
    "collapse_mean_cosine": Param(float, 0.8, in_range(-1.0, 1.0)),
    # "noisy" (a different thing from collapsed; docs/design/embedding-engines.md has the
    # measurements): a split-half Spearman of the table, over word2vec seeds or over the
    # pictures, below this...
    "noise_reliability": Param(float, 0.8, in_range(-1.0, 1.0)),
    # ... or fewer pairs per class and epoch than this reach the engine (after gensim's
    # down-sampling; see embedding/engines.py:updates_per_class).
    "min_updates_per_class": Param(float, 50.0, at_least(0.0)),
    # A class whose vectors, refitted on redrawn pictures, sit farther than this (mean
    # 1 - cosine) from its consensus vector is flagged as not stable (embedding/consensus.py).
    "unstable_dispersion": Param(float, 0.1, in_range(0.0, 2.0)),
    # Resampling over pictures (embedding/resampling.py, evaluation/uncertainty.py):
    # replicates, the intervals' coverage, and the seed of the draws.
    "bootstrap": Param(int, 200, at_least(2)),
    "confidence": Param(float, 0.95, in_range(0.5, 0.999)),
    "seed": Param(int, 0, at_least(0)),
    # "unstable ranks": a class whose nearest class is the table's in fewer replicates.
    "nearest_stability": Param(float, 0.8, in_range(0.0, 1.0)),
    # "no structure in the lower guesses": secondary_vs_confusion below this
    # (docs/uncertainty.md has the figures it was chosen from).
    "min_secondary": Param(float, 0.2, in_range(-1.0, 1.0)),
}


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    classifiers: tuple[str, ...]
    seeds: int  # runs per classifier behind its table (jax: 1, the lowest-loss restart)
    engine: str
    dim: int
    tables: np.ndarray  # [M, C, C] each classifier's cosine similarity, averaged over seeds
    mean: np.ndarray  # [C, C] the tables averaged over classifiers
    classifier_std: np.ndarray  # [C, C] std of the tables across classifiers (0 for one)
    seed_std: np.ndarray  # [C, C] std across word2vec seeds, averaged over classifiers
    classifier_agreement: float | None  # mean pairwise Spearman of the tables (>= 2 of them)
    secondary: float | None  # secondary_structure, averaged over classifiers
    classifier_accuracy: tuple[float | None, ...]  # each classifier's top-1 test accuracy
    reliability: float | None  # seed_reliability, averaged over classifiers
    noise_reasons: tuple[str, ...]  # empty unless a noise criterion fired
    uncertainty: Uncertainty  # intervals and stability under resampling (uncertainty.py)
    consensus: Consensus  # the runs' consensus; aligned: the replicates (consensus.py)
    class_map: ClassMap  # the classes in 2-D by metric MDS, with its stress (projection.py)
    consensus_agreement: float | None  # Spearman, consensus cosine table vs `mean`
    consensus_max_diff: float  # largest |consensus cosine - mean similarity|
    unstable: tuple[int, ...]  # classes whose dispersion exceeds evaluate.unstable_dispersion
    unstable_nearest: tuple[int, ...]  # classes whose nearest class holds too rarely
    flat_guesses: str | None  # the "no structure in the lower guesses" warning, if it fires
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

    @property
    def noisy(self) -> bool:
        return bool(self.noise_reasons)

    @property
    def half_width(self) -> np.ndarray:
        """The ± a similarity is quoted with: half its bootstrap interval's width."""
        return self.uncertainty.half_width

    @property
    def mean_half_width(self) -> float | None:
        """The mean ± over the class pairs (None without resampling)."""
        if not self.uncertainty.replicates:
            return None
        return float(np.nanmean(self.half_width[~np.eye(len(self.classes), dtype=bool)]))

    @property
    def covers(self) -> str:
        """One line: what the intervals cover."""
        u = self.uncertainty
        what = "the pictures" + (
            f" and the {len(self.classifiers)} classifiers" if len(self.classifiers) > 1 else ""
        )
        if self.seeds > 1:  # gensim: each redraw refits with one of its seeds
            what += " and word2vec's seeds"
        return (
            f"± is half the width of a {u.confidence:.0%} bootstrap interval: {u.replicates} "
            f"redraws of {what}, each refitted"
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every warning a reader needs, one line each, naming the remedy."""
        lines = [f"collapsed vectors: {r}" for r in self.collapse_reasons]
        lines += [f"noisy similarity table: {r}" for r in self.noise_reasons]
        if self.flat_guesses:
            lines.append(self.flat_guesses)
        if self.unstable_nearest:
            u, names = self.uncertainty, self.classes
            shown = ", ".join(
                f"{names[i]} -> {names[u.nearest[i]]} ({u.nearest_share[i]:.0%})"
                for i in self.unstable_nearest[:10]
            )
            lines.append(
                f"unstable ranks: the nearest class holds in too few redraws of the pictures for "
                f"{shown}; read those classes' neighbours as a group, not an order (more "
                "pictures of them narrow it)"
            )
        return tuple(lines)


def seed_mean_std(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0) over the seed axis."""
    return sims.mean(axis=0), sims.std(axis=0)


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


def on_test_split(pairs: Pairs) -> np.ndarray:
    """Mask of the pairs of test-split pictures (all pairs when there is no test split)."""
    if "test" not in pairs.splits:
        return np.ones(len(pairs.true), bool)
    return pairs.split == pairs.splits.index("test")


def top1_accuracy(pairs: Pairs) -> float | None:
    """Top-1 accuracy on the test pictures (all pictures without a test split)."""
    first = (pairs.rank == 1) & on_test_split(pairs)
    return float((pairs.true[first] == pairs.guess[first]).mean()) if first.any() else None


def secondary_structure(pairs: Pairs, max_pairs: int | None = None) -> float | None:
    """What a classifier's lower-ranked guesses say on their own: Spearman, over the class
    pairs, between the cosine of the classes' rows of the rank >= 2 pair counts and the
    classifier's own top-1 mistakes on the test pictures (symmetrised rates). Near 0 when
    the wrong classes' scores carry no order (label smoothing flattens them); one
    classifier's pairs. Only pictures whose top-1 guess is right count: elsewhere the top-1
    mistake is the one class the lower ranks cannot name, which would leak its structure in."""
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
    return spearman_upper(profile, (rate + rate.T) / 2, max_pairs)


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


def noise_reasons(
    reliability: float | None,
    updates: float | None,
    engine: str,
    params: dict,
    table_reliability: float | None = None,
) -> tuple[str, ...]:
    """Which noise criteria fire, each as a line for the warning and the report."""
    reasons = []
    if table_reliability is not None and table_reliability < params["noise_reliability"]:
        reasons.append(
            f"the table's reliability under resampling of the pictures is "
            f"{table_reliability:.2f} < evaluate.noise_reliability {params['noise_reliability']}: "
            "too few pictures for the differences it ranks (two redraws of them rank the class "
            "pairs differently); add pictures, and read only the largest similarities"
        )
    if reliability is not None and reliability < params["noise_reliability"]:
        reasons.append(
            f"the table's split-half reliability over word2vec seeds is {reliability:.2f} < "
            f"evaluate.noise_reliability {params['noise_reliability']}: the seed-to-seed spread "
            "is large against the differences it ranks; "
            + (
                "use embed.engine: jax, or more pictures"
                if engine == "gensim"
                else "use more pictures, or more embed.seeds"
            )
        )
    if updates is not None and updates < params["min_updates_per_class"]:
        reasons.append(
            f"only {updates:.0f} pairs per class and epoch reach the {engine} engine "
            f"(< evaluate.min_updates_per_class {params['min_updates_per_class']:g}): too "
            "few for it; "
            + (
                "use embed.engine: jax (it trains on every pair), or embed.sample: 0"
                if engine == "gensim"
                else "use more pictures"
            )
        )
    return tuple(reasons)


def flat_guesses_reason(secondary: float | None, top_k: int, params: dict) -> str | None:
    """The warning that the 2nd..k-th guesses carry no class structure, or None."""
    if secondary is None or top_k < 2 or secondary >= params["min_secondary"]:
        return None
    return (
        f"no structure in the lower guesses: the 2nd to {top_k}-th guesses rank the class "
        f"pairs like the top-1 mistakes at Spearman {secondary:.2f} < evaluate.min_secondary "
        f"{params['min_secondary']} (label smoothing, over-confident or non-probabilistic "
        "scores flatten them), so the table rests on the top-1 mistakes alone; use "
        "pairs.top_k: 1, or calibrated probabilities"
    )


def evaluate(
    pairs: Pairs,
    vectors: np.ndarray,
    params: dict,
    manifest: dict | None = None,
    replicates: np.ndarray | None = None,
) -> Evaluation:
    """All figures of the stage from the pairs, the [M, R, C, dim] vectors (M classifiers,
    R runs each) and their refits on bootstrap draws of the pictures, [M, B, C, dim]
    (embedding/resampling.py; None: no resampling, B = 0); `manifest` (the embed stage's)
    names the engine and how many pairs reached it."""
    manifest = manifest or {}
    engine = manifest.get("engine", "?")
    sims = cosine_matrices(vectors)  # [M, R, C, C]
    tables = sims.mean(axis=1)
    mean = tables.mean(axis=0)
    c = len(pairs.classes)
    max_pairs = c * params["top_n"]
    per_classifier = [pairs.of(i) for i in range(len(pairs.classifiers))]
    secondary = [secondary_structure(p, max_pairs) for p in per_classifier]
    secondary = [s for s in secondary if s is not None]
    secondary_mean = float(np.mean(secondary)) if secondary else None
    conf_sim = confusion_similarity(pairs)
    rho = spearman_upper(mean, conf_sim, max_pairs=max_pairs)
    reliabilities = [seed_reliability(s, conf_sim, max_pairs) for s in sims]
    reliabilities = [r for r in reliabilities if r is not None]
    reliability = float(np.mean(reliabilities)) if reliabilities else None
    if replicates is None:
        replicates = np.empty((*vectors.shape[:1], 0, *vectors.shape[2:]), np.float32)
    listed = c - 1 if c <= KEEP_ALL_PAIRS_MAX_CLASSES else min(params["top_n"], c - 1)
    spread = uncertainty(
        tables,
        replicates,
        listed,
        ranked_pairs(conf_sim, max_pairs),
        params["confidence"],
        params["seed"],
    )
    consensus = spread_around(
        align_runs(vectors.reshape(-1, *vectors.shape[2:])),
        replicates.reshape(-1, *replicates.shape[2:]),
    )
    iu = np.triu_indices(len(mean), k=1)
    consensus_table = consensus.table()
    offdiag = mean_offdiag(mean)
    groups = resolve_groups(params["groups"], pairs.groups, pairs.classes)
    labels = group_labels(groups, pairs.classes)
    separation, agreement, ari = group_scores(mean, labels)
    link = average_linkage(mean)
    return Evaluation(
        classes=pairs.classes,
        classifiers=pairs.classifiers,
        seeds=vectors.shape[1],
        engine=engine,
        dim=vectors.shape[3],
        tables=tables,
        mean=mean,
        classifier_std=tables.std(axis=0),
        seed_std=sims.std(axis=1).mean(axis=0),
        classifier_agreement=table_agreement(tables),
        secondary=secondary_mean,
        classifier_accuracy=tuple(top1_accuracy(p) for p in per_classifier),
        reliability=reliability,
        noise_reasons=noise_reasons(
            reliability,
            manifest.get("updates_per_class"),
            engine,
            params,
            spread.reliability,
        ),
        uncertainty=spread,
        consensus=consensus,
        class_map=class_map(mean),
        consensus_agreement=(
            float(spearmanr(consensus_table[iu], mean[iu]).statistic) if len(iu[0]) > 1 else None
        ),
        consensus_max_diff=float(np.abs(consensus_table - mean)[iu].max()) if len(iu[0]) else 0.0,
        unstable=tuple(
            int(i) for i in np.flatnonzero(consensus.dispersion > params["unstable_dispersion"])
        ),
        unstable_nearest=tuple(
            int(i)
            for i in np.argsort(spread.nearest_share, kind="stable")
            if spread.replicates and spread.nearest_share[i] < params["nearest_stability"]
        ),
        flat_guesses=flat_guesses_reason(secondary_mean, pairs.top_k, params),
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
