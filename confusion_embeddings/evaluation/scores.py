"""The figures of the evaluate stage, put together: `compute_figures` and its `Evaluation`.

Reads and writes nothing. Cosine matrices are computed per run (gensim: per word2vec seed),
then averaged; std is the population std (ddof=0); the intervals come from resampling
(uncertainty.py). The figures themselves live by concern: what the pairs say on their own
(confusion.py), rank statistics of tables (ranking.py: spearman_vs_confusion is Spearman of
embedding and confusion similarity over the class pairs), class groups (groups.py), the
warnings (caveats.py). With classes the classifiers never saw (pairs.unseen), the figures
that compare with the classifiers' guesses (spearman_vs_confusion, secondary_vs_confusion,
the classifiers' accuracy) are over the known classes: an unseen class cannot be guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster import hierarchy
from scipy.stats import spearmanr

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.embedding.consensus import (
    Consensus,
    align_runs,
    cosine_matrices,
    spread_around,
)
from confusion_embeddings.evaluation import caveats
from confusion_embeddings.evaluation.confusion import (
    confusion_counts,
    confusion_similarity,
    secondary_structure,
    top1_accuracy,
)
from confusion_embeddings.evaluation.groups import (
    average_linkage,
    group_labels,
    group_scores,
    resolve_groups,
)
from confusion_embeddings.evaluation.projection import ClassMap, class_map
from confusion_embeddings.evaluation.ranking import (
    mean_offdiag,
    ranked_pairs,
    seed_reliability,
    spearman_upper,
    table_agreement,
)
from confusion_embeddings.evaluation.uncertainty import (
    Uncertainty,
    uncertainty,
)
from confusion_embeddings.evaluation.unseen import Unseen
from confusion_embeddings.pairs import Pairs


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
    unseen: Unseen | None = None  # classes the classifiers never saw (evaluation/unseen.py)

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
            u = self.uncertainty
            lines.append(
                caveats.unstable_ranks_reason(
                    [
                        (self.classes[i], self.classes[u.nearest[i]], u.nearest_share[i])
                        for i in self.unstable_nearest
                    ]
                )
            )
        return tuple(lines)


def _spread(
    tables: np.ndarray,
    replicates: np.ndarray,
    conf_sim: np.ndarray,
    config: EvaluateConfig,
    seed: int,
) -> Uncertainty:
    """The tables' uncertainty (evaluation/uncertainty.py) over the neighbours the report
    lists: every other class up to `all_pairs_max_classes` classes, else the top_n."""
    c = tables.shape[-1]
    listed = c - 1 if c <= config.all_pairs_max_classes else min(config.top_n, c - 1)
    confused = ranked_pairs(conf_sim, c * config.top_n)
    return uncertainty(tables, replicates, listed, confused, config.confidence, seed)


def compute_figures(
    pairs: Pairs,
    vectors: np.ndarray,
    config: EvaluateConfig,
    manifest: dict | None = None,
    replicates: np.ndarray | None = None,
    seed: int = 0,
) -> Evaluation:
    """All figures of the stage from the pairs, the [M, R, C, dim] vectors (M classifiers,
    R runs each) and their refits on bootstrap draws of the pictures, [M, B, C, dim]
    (embedding/resampling.py; None: no resampling, B = 0), whose `seed` also draws the
    classifiers (uncertainty.py); `manifest` (the embed stage's) names the engine and how
    many pairs reached it."""
    manifest = {"engine": "?", **(manifest or {})}
    sims = cosine_matrices(vectors)  # [M, R, C, C]
    tables = sims.mean(axis=1)
    mean = tables.mean(axis=0)
    max_pairs = len(pairs.classes) * config.top_n
    per_classifier = [pairs.of(i) for i in range(len(pairs.classifiers))]
    conf_sim = confusion_similarity(pairs)
    secondary = _mean_of([secondary_structure(p, max_pairs) for p in per_classifier])
    reliability = _mean_of([seed_reliability(s, conf_sim, max_pairs) for s in sims])
    rho = spearman_upper(*_known_block(pairs, mean, conf_sim), max_pairs=max_pairs)
    if replicates is None:
        replicates = np.empty((*vectors.shape[:1], 0, *vectors.shape[2:]), np.float32)
    spread = _spread(tables, replicates, conf_sim, config, seed)
    offdiag = mean_offdiag(mean)
    return Evaluation(
        classes=pairs.classes,
        classifiers=pairs.classifiers,
        seeds=vectors.shape[1],
        engine=manifest["engine"],
        dim=vectors.shape[3],
        tables=tables,
        mean=mean,
        classifier_std=tables.std(axis=0),
        seed_std=sims.std(axis=1).mean(axis=0),
        classifier_agreement=table_agreement(tables),
        secondary=secondary,
        classifier_accuracy=tuple(top1_accuracy(p) for p in per_classifier),
        reliability=reliability,
        noise_reasons=caveats.noise_reasons(
            reliability,
            manifest.get("updates_per_class"),
            manifest["engine"],
            config,
            spread.reliability,
        ),
        uncertainty=spread,
        class_map=class_map(mean),
        unstable_nearest=_unstable_nearest(spread, config.nearest_stability),
        flat_guesses=caveats.flat_guesses_reason(secondary, pairs.top_k, config),
        confusion=confusion_counts(pairs),
        confusion_sim=conf_sim,
        spearman=rho,
        mean_offdiag=offdiag,
        collapse_reasons=caveats.collapse_reasons(rho, offdiag, config),
        n_pictures=pairs.n_pictures,
        top_k=pairs.top_k,
        **_consensus_figures(vectors, replicates, mean, config),
        **_group_figures(pairs, mean, config),
    )


def _known_block(pairs: Pairs, *tables: np.ndarray) -> tuple[np.ndarray, ...]:
    """The tables' rows and columns of the classes the classifiers were trained on. A class
    they never saw is never guessed, so its confusion rate with a class b is half that of two
    known classes ((R + R^T) / 2 with R[b, unseen] = 0): it ranks against them on a different
    scale. Its row is read against the reference instead (evaluation/unseen.py)."""
    if not pairs.unseen:
        return tables
    known = np.setdiff1d(np.arange(pairs.n_classes), pairs.unseen_ids)
    return tuple(t[np.ix_(known, known)] for t in tables)


def _mean_of(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (per classifier), or None."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _unstable_nearest(spread: Uncertainty, threshold: float) -> tuple[int, ...]:
    """Classes whose nearest class holds in fewer than `threshold` of the redraws, least
    stable first (none without resampling)."""
    if not spread.replicates:
        return ()
    order = np.argsort(spread.nearest_share, kind="stable")
    return tuple(int(i) for i in order if spread.nearest_share[i] < threshold)


def _consensus_figures(
    vectors: np.ndarray, replicates: np.ndarray, mean: np.ndarray, config: EvaluateConfig
) -> dict:
    """Evaluation's consensus fields: the runs' consensus vectors with the replicates aligned
    to them, how its own table agrees with the mean table, and the classes it holds loosely."""
    consensus = spread_around(
        align_runs(vectors.reshape(-1, *vectors.shape[2:])),
        replicates.reshape(-1, *replicates.shape[2:]),
    )
    iu = np.triu_indices(len(mean), k=1)
    table = consensus.table()
    return {
        "consensus": consensus,
        "consensus_agreement": (
            float(spearmanr(table[iu], mean[iu]).statistic) if len(iu[0]) > 1 else None
        ),
        "consensus_max_diff": float(np.abs(table - mean)[iu].max()) if len(iu[0]) else 0.0,
        "unstable": tuple(
            int(i) for i in np.flatnonzero(consensus.dispersion > config.unstable_dispersion)
        ),
    }


def _group_figures(pairs: Pairs, mean: np.ndarray, config: EvaluateConfig) -> dict:
    """Evaluation's group fields (groups.py) and the average-linkage tree of all classes."""
    groups = resolve_groups(config.groups, pairs.groups, pairs.classes)
    labels = group_labels(groups, pairs.classes)
    separation, agreement, ari = group_scores(mean, labels)
    link = average_linkage(mean)
    return {
        "groups": groups,
        "group_labels": labels,
        "group_separation": separation,
        "group_nn_agreement": agreement,
        "group_ari": ari,
        "linkage": link,
        "leaf_order": hierarchy.leaves_list(link),
    }
