"""The evaluate stage's pictures: heatmap, dendrogram and 2-D class map (PNG).

Writes into the folder it is given; reads nothing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.cluster import hierarchy

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.evaluation.projection import ClassMap, replicate_maps
from confusion_embeddings.evaluation.scores import Evaluation
from confusion_embeddings.evaluation.uncertainty import (
    ranked_neighbours,
)

# Presentation limits, not hyperparameters: beyond them labels stop being readable.
PLOT_LABEL_MAX_CLASSES = 60
DENDROGRAM_MAX_LEAVES = 50


def _group_colours(ev: Evaluation) -> list[tuple[float, ...]]:
    """One colour per class: its group's, grey outside every group."""
    cmap = colormaps["tab10" if len(ev.groups or {}) <= 10 else "tab20"]
    return [cmap(g % cmap.N) if g >= 0 else (0.6, 0.6, 0.6, 1.0) for g in ev.group_labels]


def heatmap(ev: Evaluation, config: EvaluateConfig) -> Figure:
    """The mean similarity table as a heatmap, classes in average-linkage order."""
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
    if c <= config.table_max_classes:
        for r, i in enumerate(order):
            for k, j in enumerate(order):
                value = ev.mean[i, j]
                ax.text(
                    k,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if abs(value) > 0.6 else "black",
                )
    ax.set_title("Class similarity (ordered by average-linkage clustering)")
    fig.tight_layout()
    return fig


def write_plots(ev: Evaluation, out_dir: Path, config: EvaluateConfig) -> None:
    names, c = ev.classes, len(ev.classes)
    heatmap(ev, config).savefig(out_dir / "similarity_heatmap.png", dpi=120)

    fig = Figure(figsize=(max(8.0, min(0.35 * c, 16.0)), 5))
    ax = fig.subplots()
    truncate = (
        {"truncate_mode": "lastp", "p": DENDROGRAM_MAX_LEAVES} if c > DENDROGRAM_MAX_LEAVES else {}
    )
    hierarchy.dendrogram(ev.linkage, labels=list(names), ax=ax, leaf_rotation=90, **truncate)
    ax.set_ylabel("1 - cosine similarity (average linkage)")
    fig.tight_layout()
    fig.savefig(out_dir / "dendrogram.png", dpi=120)

    _class_map(ev, out_dir / "class_map.png")


# Replicates drawn as faint points on the class map (each is one MDS fit).
MAP_REPLICATES = 50


def redrawn_tables(ev: Evaluation, count: int) -> list[np.ndarray]:
    """Up to `count` bootstrap replicates' full tables, where the replicates were kept for
    every class pair (params `evaluate.all_pairs_max_classes`); else none."""
    u, c = ev.uncertainty, len(ev.classes)
    if u.pairs[0].size != c * (c - 1) // 2:
        return []
    tables = []
    for values in u.tables[:count]:
        if np.isnan(values).any():
            continue
        t = np.eye(c)
        t[u.pairs] = values
        tables.append(t + np.triu(t, k=1).T)
    return tables


def _label_positions(coords: np.ndarray, span: float) -> np.ndarray:
    """Label anchors pushed apart where points crowd (cat and dog), in data units."""
    pos = coords + np.array([0.02, 0.02]) * span
    gap = 0.06 * span
    for _ in range(100):
        moved = False
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                delta = pos[i] - pos[j]
                dist = float(np.hypot(*delta))
                if dist < gap:
                    step = (delta / dist if dist > 0 else np.array([0.0, 1.0])) * (gap - dist) / 2
                    pos[i] += step
                    pos[j] -= step
                    moved = True
        if not moved:
            break
    return pos


def _map_panel(ax, title, members, names, coords, runs, colours, span: float) -> None:
    """One panel of the class map: the `members` classes, their replicates' positions
    (`runs`, or None) faint, and their names where there are few enough to read."""
    labelled = len(members) <= PLOT_LABEL_MAX_CLASSES
    if runs is not None and len(runs):
        for i in members:
            ax.scatter(runs[:, i, 0], runs[:, i, 1], color=colours[i], s=6, alpha=0.3, linewidths=0)
    ax.scatter(
        coords[members, 0],
        coords[members, 1],
        c=[colours[i] for i in members],
        s=40 if labelled else 8,
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
    )
    if labelled:
        labels = _label_positions(coords[members], span)
        for i, at in zip(members, labels, strict=True):
            ax.annotate(
                names[i],
                coords[i],
                xytext=at,
                fontsize=9,
                zorder=4,
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"},
            )
    ax.set_title(title or "Classes by metric MDS on 1 - cosine", fontsize=10)
    ax.set_xlabel("MDS axis 1 (distance: 1 - cosine)")
    ax.set_ylabel("MDS axis 2")
    ax.set_aspect("equal", adjustable="datalim")


def _class_map(ev: Evaluation, path: Path) -> ClassMap:
    """The classes in 2-D by metric MDS on 1 - cosine (projection.py), the replicates'
    positions as faint points; one panel per group when there are too many classes to label
    in one. Returns the map (its stress is printed on the plot)."""
    names, c = ev.classes, len(ev.classes)
    layout = ev.class_map
    coords = layout.coords
    runs = (
        replicate_maps(layout, redrawn_tables(ev, MAP_REPLICATES))
        if c <= PLOT_LABEL_MAX_CLASSES
        else None
    )
    colours = _group_colours(ev)
    panels: list[tuple[str, np.ndarray]] = [("", np.arange(c))]
    if c > PLOT_LABEL_MAX_CLASSES and ev.groups and len(ev.groups) <= 20:
        panels = [(g, np.flatnonzero(ev.group_labels == i)) for i, g in enumerate(ev.groups)]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(8 * cols / (1 + (cols > 1)), 7 * rows / (1 + (rows > 1))))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    span = float(np.ptp(coords, axis=0).max()) or 1.0
    for ax, (title, members) in zip(axes, panels, strict=False):
        _map_panel(ax, title, members, names, coords, runs, colours, span)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if len(panels) == 1 and ev.groups and len(ev.groups) <= 20:
        for g, group in enumerate(ev.groups):
            first = int(np.flatnonzero(ev.group_labels == g)[0])
            axes[0].scatter([], [], color=colours[first], label=group)
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(
        f"stress {layout.stress:.3f}, nearest class kept for {layout.nearest_kept:.0%} of the "
        "classes" + ("; faint: redrawn pictures" if runs is not None and len(runs) else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return layout


SIMILARITY_COLUMNS = ("class", "neighbour", "cosine", "low", "high", "rank_low", "rank_high")


def similarity_rows(ev: Evaluation) -> list[tuple]:
    """(class, neighbour, cosine, low, high, rank_low, rank_high) rows, neighbours most
    similar first: the long table DVC draws as a heatmap (dvc.yaml's `similarity` plot) and
    `dvc plots diff` compares between experiments. low/high: the similarity's bootstrap
    interval; rank_low/rank_high: the neighbour's rank interval (1 = nearest). Each class's
    listed neighbours: every other class up to params `evaluate.all_pairs_max_classes`
    classes, its top_n beyond (a 1,000-class table would be a million rows)."""
    u = ev.uncertainty
    n = u.listed

    def num(x: float) -> float | str:
        return "" if np.isnan(x) else round(float(x), 4)

    rows = []
    for i, name in enumerate(ev.classes):
        for j in ranked_neighbours(ev.mean, i)[:n]:
            rows.append(
                (
                    name,
                    ev.classes[j],
                    num(ev.mean[i, j]),
                    num(u.low[i, j]),
                    num(u.high[i, j]),
                    int(u.rank_low[i, j]) or "",
                    int(u.rank_high[i, j]) or "",
                )
            )
    return rows


def write_similarity_csv(ev: Evaluation, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SIMILARITY_COLUMNS)
        writer.writerows(similarity_rows(ev))
