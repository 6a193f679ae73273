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

from confusion_embeddings.embedding.consensus import unit
from confusion_embeddings.evaluation.scores import Evaluation, ranked_neighbours
from confusion_embeddings.evaluation.uncertainty import KEEP_ALL_PAIRS_MAX_CLASSES

# Presentation limits, not hyperparameters: beyond them labels stop being readable.
PLOT_LABEL_MAX_CLASSES = 60
DENDROGRAM_MAX_LEAVES = 50


def _group_colours(ev: Evaluation) -> list[tuple[float, ...]]:
    """One colour per class: its group's, grey outside every group."""
    cmap = colormaps["tab10" if len(ev.groups or {}) <= 10 else "tab20"]
    return [cmap(g % cmap.N) if g >= 0 else (0.6, 0.6, 0.6, 1.0) for g in ev.group_labels]


def heatmap(ev: Evaluation, params: dict) -> Figure:
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
    if c <= params["table_max_classes"]:
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


def write_plots(ev: Evaluation, out_dir: Path, params: dict) -> None:
    names, c = ev.classes, len(ev.classes)
    heatmap(ev, params).savefig(out_dir / "similarity_heatmap.png", dpi=120)

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


def map_coordinates(ev: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of the consensus vectors [C, 2] and of every aligned run [R, C, 2]:
    both projected on the consensus unit vectors' two principal axes."""
    centre = unit(ev.consensus.vectors)
    mu = centre.mean(axis=0)
    _, _, axes = np.linalg.svd(centre - mu, full_matrices=False)
    basis = axes[:2].T
    # An axis's sign is arbitrary: fix it so reruns draw the same picture.
    proj = (centre - mu) @ basis
    basis = basis * np.where(proj[np.abs(proj).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
    return (centre - mu) @ basis, (ev.consensus.aligned - mu) @ basis


def _class_map(ev: Evaluation, path: Path) -> None:
    """The consensus embedding in 2-D, every run's position of each class as faint points
    around it; one panel per group when there are too many classes to label in one."""
    names, c = ev.classes, len(ev.classes)
    coords, runs = map_coordinates(ev)
    colours = _group_colours(ev)
    panels: list[tuple[str, np.ndarray]] = [("", np.arange(c))]
    if c > PLOT_LABEL_MAX_CLASSES and ev.groups and len(ev.groups) <= 20:
        panels = [(g, np.flatnonzero(ev.group_labels == i)) for i, g in enumerate(ev.groups)]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(8 * cols / (1 + (cols > 1)), 7 * rows / (1 + (rows > 1))))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (title, members) in zip(axes, panels, strict=False):
        labelled = len(members) <= PLOT_LABEL_MAX_CLASSES
        for i in members:
            ax.scatter(
                runs[:, i, 0], runs[:, i, 1], color=colours[i], s=6, alpha=0.25, linewidths=0
            )
        ax.scatter(
            coords[members, 0],
            coords[members, 1],
            c=[colours[i] for i in members],
            s=40 if labelled else 8,
            edgecolors="black",
            linewidths=0.5,
        )
        if labelled:
            for i in members:
                ax.annotate(
                    names[i], coords[i], textcoords="offset points", xytext=(4, 4), fontsize=9
                )
        ax.set_title(
            title or "Consensus class vectors (faint: refits on redrawn pictures)", fontsize=10
        )
        ax.set_aspect("equal", adjustable="datalim")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if len(panels) == 1 and ev.groups and len(ev.groups) <= 20:
        for g, group in enumerate(ev.groups):
            first = int(np.flatnonzero(ev.group_labels == g)[0])
            axes[0].scatter([], [], color=colours[first], label=group)
        axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SIMILARITY_COLUMNS = ("class", "neighbour", "cosine", "low", "high", "rank_low", "rank_high")


def similarity_rows(ev: Evaluation, top_n: int) -> list[tuple]:
    """(class, neighbour, cosine, low, high, rank_low, rank_high) rows, neighbours most
    similar first: the long table DVC draws as a heatmap (dvc.yaml's `similarity` plot) and
    `dvc plots diff` compares between experiments. low/high: the similarity's bootstrap
    interval; rank_low/rank_high: the neighbour's rank interval (1 = nearest). Every ordered
    pair up to KEEP_ALL_PAIRS_MAX_CLASSES classes, each class's top_n neighbours beyond (a
    1,000-class table would be a million rows no plot can show)."""
    c, u = len(ev.classes), ev.uncertainty
    n = c - 1 if c <= KEEP_ALL_PAIRS_MAX_CLASSES else min(top_n, c - 1)

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


def write_similarity_csv(ev: Evaluation, path: Path, top_n: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SIMILARITY_COLUMNS)
        writer.writerows(similarity_rows(ev, top_n))
