"""Evaluate stage: how well the class vectors reflect what the classifier confuses.

Reads: <pairs>/pairs.npz (stages/pairs.py), <embed>/vectors.npy + manifest.json
(stages/embed.py) and the `evaluate` section of params.yaml:
    groups                {group: [class names]} or null (then the predictions file's own
                          `groups`, if any); groups must not overlap
    top_n                 neighbours listed per class when the report lists neighbours
    table_max_classes     at or below this many classes the report prints the paper's tables
                          (and the heatmap its values); above, a top_n neighbour list
    collapse_threshold    Spearman vs confusion below this => "collapsed"
    collapse_mean_cosine  mean off-diagonal cosine above this => "collapsed"

Writes:
  <metrics>   JSON (floats rounded to 4 decimals): classes, seeds, dim, similarity_mean and
              similarity_std as {a: {b: x}} (only up to 50 classes, to keep it small),
              nearest {a: {class, similarity}}, spearman_vs_confusion, mean_offdiag_cosine,
              collapsed, group_separation, group_nn_agreement, group_ari (null w/o groups)
  <report>    markdown: summary figures and the paper-style tables (one per group)
  <plots>/    similarity_heatmap.png (rows in clustering leaf order), dendrogram.png,
              class_map.png (classical MDS of the mean cosine distances, seed-independent)
  <matrices>  npz with the full matrices (any number of classes): classes, similarity_mean,
              similarity_std, confusion (top-1 counts, actual x predicted),
              confusion_similarity, leaf_order

Definitions (all on the seed-averaged cosine matrix unless said otherwise):
  - cosine matrices are computed per seed, then averaged; std is the population std (ddof=0).
  - confusion similarity of classes a, b: R[a, b] = fraction of a's pictures that have b among
    their top-k guesses (the very pairs word2vec trains on), symmetrised as (R + R^T) / 2.
  - spearman_vs_confusion: Spearman rank correlation of embedding and confusion similarity
    over all unordered class pairs.
  - group metrics use only classes that belong to a group, and need >= 2 groups (else null):
    separation = mean within-group similarity - mean across-group similarity; nn agreement =
    fraction of classes whose most similar class is in their group; ARI = adjusted Rand index
    of an average-linkage clustering on 1 - cosine, cut at the number of groups.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.special import comb
from scipy.stats import spearmanr

from stages.common import (
    Param,
    PipelineError,
    at_least,
    atomic_dir,
    atomic_file,
    in_range,
    load_params,
    run_main,
    write_json,
)
from stages.embed import load_embeddings
from stages.pairs import Pairs, load_pairs, save_npz
from stages.predictions import check_groups

SCHEMA = {
    "groups": Param(dict, None, nullable=True),
    "top_n": Param(int, 9, at_least(1)),
    "table_max_classes": Param(int, 20, at_least(1)),
    "collapse_threshold": Param(float, 0.2, in_range(-1.0, 1.0)),
    "collapse_mean_cosine": Param(float, 0.8, in_range(-1.0, 1.0)),
}

# Presentation limits, not hyperparameters: beyond them matrices and labels stop being readable.
JSON_MATRIX_MAX_CLASSES = 50
PLOT_LABEL_MAX_CLASSES = 60
DENDROGRAM_MAX_LEAVES = 50
REPORT_TOP_PAIRS = 10  # most similar pairs named in the report's summary
JSON_DECIMALS = 4


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


# --------------------------------------------------------------------------- core


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
            raise PipelineError(f"{source}: group '{group}' must be a list of class names, got {members!r}")
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


def group_scores(mean: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None, float | None]:
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
            "(embed.shuffle false with embed.sample 0, or many more epochs), see stages/embed.py"
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


# --------------------------------------------------------------------------- outputs


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), JSON_DECIMALS)


def metrics_dict(ev: Evaluation) -> dict:
    names = ev.classes
    out: dict = {"classes": list(names), "seeds": ev.seeds, "dim": ev.dim}
    if len(names) <= JSON_MATRIX_MAX_CLASSES:
        for key, mat in (("similarity_mean", ev.mean), ("similarity_std", ev.std)):
            out[key] = {a: {b: _r(mat[i, j]) for j, b in enumerate(names) if j != i} for i, a in enumerate(names)}
    nearest = {}
    for i, a in enumerate(names):
        j = ranked_neighbours(ev.mean, i)[0]
        nearest[a] = {"class": names[j], "similarity": _r(ev.mean[i, j])}
    out["nearest"] = nearest
    out.update(
        {
            "spearman_vs_confusion": _r(ev.spearman),
            "mean_offdiag_cosine": _r(ev.mean_offdiag),
            "collapsed": ev.collapsed,
            "group_separation": _r(ev.group_separation),
            "group_nn_agreement": _r(ev.group_nn_agreement),
            "group_ari": _r(ev.group_ari),
        }
    )
    return out


def _cell(ev: Evaluation, i: int, j: int) -> str:
    return f"{ev.classes[j]} {ev.mean[i, j]:.2f} ± {ev.std[i, j]:.2f}"


def _table(ev: Evaluation, columns: list[int]) -> list[str]:
    """Paper-style table: one column per class, all other classes below it, most similar first."""
    ranked = [ranked_neighbours(ev.mean, i) for i in columns]
    lines = ["| " + " | ".join(f"**{ev.classes[i]}**" for i in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in range(len(ev.classes) - 1):
        lines.append("| " + " | ".join(_cell(ev, i, r[row]) for i, r in zip(columns, ranked)) + " |")
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def render_report(ev: Evaluation, params: dict) -> str:
    names, c = ev.classes, len(ev.classes)
    lines = [
        "# Class similarity learned from the classifier's confusions",
        "",
        f"Cosine similarity between the word2vec class vectors ({ev.dim} dimensions), mean ± std over "
        f"{ev.seeds} seed(s); trained on {ev.n_pictures} pictures x top-{ev.top_k} guesses.",
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| classes | {c} |",
        f"| Spearman vs confusion similarity | {_fmt(ev.spearman)} |",
        f"| mean off-diagonal cosine | {_fmt(ev.mean_offdiag)} |",
        f"| collapsed | {'**YES**' if ev.collapsed else 'no'} |",
        f"| group separation (within - across) | {_fmt(ev.group_separation)} |",
        f"| nearest class in the same group | {_fmt(ev.group_nn_agreement)} |",
        f"| ARI, clustering vs groups | {_fmt(ev.group_ari)} |",
        "",
    ]
    if ev.collapsed:
        lines += ["> **Warning: the vectors look collapsed.**", ">"]
        lines += [f"> - {reason}" for reason in ev.collapse_reasons]
        lines.append("")
    iu = np.triu_indices(c, k=1)
    top = np.argsort(-ev.mean[iu], kind="stable")[:REPORT_TOP_PAIRS]
    lines += ["Most similar pairs: " + ", ".join(
        f"{names[iu[0][t]]}~{names[iu[1][t]]} {ev.mean[iu[0][t], iu[1][t]]:.2f}" for t in top
    ), ""]

    if c <= params["table_max_classes"]:
        lines += ["## Similarity tables", "", "Each column ranks all other classes, most similar first.", ""]
        grouped = {g: [names.index(m) for m in members] for g, members in (ev.groups or {}).items()}
        rest = [i for i in range(c) if ev.group_labels[i] < 0]
        if rest:
            grouped["other" if grouped else "all classes"] = rest
        for title, columns in grouped.items():
            lines += [f"### {title}", "", *_table(ev, columns), ""]
    else:
        n = min(params["top_n"], c - 1)
        group_names = list((ev.groups or {}).keys())
        lines += [f"## Nearest {n} classes of each class", ""]
        for i, name in enumerate(names):
            tag = f" ({group_names[ev.group_labels[i]]})" if ev.group_labels[i] >= 0 else ""
            near = ", ".join(_cell(ev, i, j) for j in ranked_neighbours(ev.mean, i)[:n])
            lines.append(f"- **{name}**{tag}: {near}")
        lines.append("")
    return "\n".join(lines)


def _group_colours(ev: Evaluation) -> list[tuple[float, ...]]:
    """One colour per class: its group's, grey outside every group."""
    cmap = colormaps["tab10" if len(ev.groups or {}) <= 10 else "tab20"]
    return [cmap(g % cmap.N) if g >= 0 else (0.6, 0.6, 0.6, 1.0) for g in ev.group_labels]


def write_plots(ev: Evaluation, out_dir: Path, params: dict) -> None:
    names, c = ev.classes, len(ev.classes)
    labelled = c <= PLOT_LABEL_MAX_CLASSES
    side = min(max(6.0, 0.45 * c), 16.0) if labelled else 10.0

    order = ev.leaf_order
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(ev.mean[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(image, ax=ax, label="mean cosine similarity")
    if labelled:
        ax.set_xticks(range(c), [names[i] for i in order], rotation=90)
        ax.set_yticks(range(c), [names[i] for i in order])
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if c <= params["table_max_classes"]:
        for r, i in enumerate(order):
            for k, j in enumerate(order):
                value = ev.mean[i, j]
                ax.text(k, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(value) > 0.6 else "black")
    ax.set_title("Class similarity (ordered by average-linkage clustering)")
    fig.tight_layout()
    fig.savefig(out_dir / "similarity_heatmap.png", dpi=120)

    fig = Figure(figsize=(max(8.0, min(0.35 * c, 16.0)), 5))
    ax = fig.subplots()
    truncate = {"truncate_mode": "lastp", "p": DENDROGRAM_MAX_LEAVES} if c > DENDROGRAM_MAX_LEAVES else {}
    hierarchy.dendrogram(ev.linkage, labels=list(names), ax=ax, leaf_rotation=90, **truncate)
    ax.set_ylabel("1 - cosine similarity (average linkage)")
    fig.tight_layout()
    fig.savefig(out_dir / "dendrogram.png", dpi=120)

    coords = classical_mds(np.clip(1.0 - ev.mean, 0.0, 2.0))
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    colours = _group_colours(ev)
    ax.scatter(coords[:, 0], coords[:, 1], c=colours, s=40 if labelled else 8)
    if labelled:
        for (x, y), name in zip(coords, names):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=9)
    if ev.groups and len(ev.groups) <= 20:
        for g, group in enumerate(ev.groups):
            first = int(np.flatnonzero(ev.group_labels == g)[0])
            ax.scatter([], [], color=colours[first], label=group)
        ax.legend(loc="best", fontsize=8)
    ax.set_title("Class map (classical MDS of 1 - mean cosine)")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(out_dir / "class_map.png", dpi=120)


def warn_if_collapsed(ev: Evaluation) -> None:
    if not ev.collapsed:
        return
    bar = "!" * 78
    lines = [bar, "WARNING: the class vectors look COLLAPSED; the figures are not to be trusted."]
    lines += [f"  - {reason}" for reason in ev.collapse_reasons]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="data/pairs", help="pairs directory")
    parser.add_argument("--embed", default="data/embed", help="embed directory")
    parser.add_argument("--metrics", default="metrics/similarity.json")
    parser.add_argument("--report", default="reports/similarity.md")
    parser.add_argument("--plots", default="reports/plots", help="directory of PNG plots")
    parser.add_argument("--matrices", default="reports/similarity_matrices.npz", help="full matrices (npz)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params("evaluate", SCHEMA, args.params)
    pairs = load_pairs(args.pairs)
    vectors, manifest = load_embeddings(args.embed)
    if tuple(manifest["classes"]) != pairs.classes:
        raise PipelineError(
            f"{args.embed}: its classes differ from those of {args.pairs}; rerun embed (dvc repro embed)"
        )
    ev = evaluate(pairs, vectors, params)
    warn_if_collapsed(ev)

    with atomic_dir(args.plots) as tmp:
        write_plots(ev, tmp, params)
    with atomic_file(args.report) as tmp:
        tmp.write_text(render_report(ev, params))
    with atomic_file(args.matrices) as tmp:
        save_npz(
            tmp,
            {
                "classes": np.array(ev.classes, dtype=str),
                "similarity_mean": ev.mean.astype(np.float32),
                "similarity_std": ev.std.astype(np.float32),
                "confusion": ev.confusion,
                "confusion_similarity": ev.confusion_sim.astype(np.float32),
                "leaf_order": ev.leaf_order,
            },
        )
    write_json(args.metrics, metrics_dict(ev))
    print(
        f"evaluate: Spearman vs confusion {_fmt(ev.spearman)}, mean off-diagonal cosine {ev.mean_offdiag:.4f}, "
        f"collapsed {ev.collapsed}; report {args.report}"
    )


if __name__ == "__main__":
    run_main(main)
