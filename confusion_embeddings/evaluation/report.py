"""The evaluate stage's text outputs: the metrics (headline scalars) and the report.

Writes nothing itself: `metrics_dict` and `render_report` return what the stage writes.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy.stats import spearmanr

from confusion_embeddings.evaluation.scores import Evaluation, ranked_neighbours

REPORT_TOP_PAIRS = 10  # most similar pairs named in the report's summary
JSON_DECIMALS = 4


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), JSON_DECIMALS)


def metrics_dict(ev: Evaluation) -> dict:
    """Headline scalars only (tens, not hundreds, of `dvc exp show` columns): the tables
    themselves are plot data (plots.similarity_rows) and the report."""
    figures = {
        "classes": len(ev.classes),
        "classifiers": len(ev.classifiers),
        "seeds": ev.seeds,
        "classifier_agreement": _r(ev.classifier_agreement),
        "classifier_spread": (
            _r(_offdiag_mean(ev.classifier_std)) if len(ev.classifiers) > 1 else None
        ),
        "seed_spread": _r(_offdiag_mean(ev.seed_std)),
        "spearman_vs_confusion": _r(ev.spearman),
        "secondary_vs_confusion": _r(ev.secondary),
        "mean_offdiag_cosine": _r(ev.mean_offdiag),
        "collapsed": ev.collapsed,
        "seed_reliability": _r(ev.reliability),
        "noisy": ev.noisy,
        "consensus_vs_mean_table": _r(ev.consensus_agreement),
        "consensus_max_diff": _r(ev.consensus_max_diff),
        "least_stable_dispersion": _r(float(ev.consensus.dispersion.max())),
        "group_separation": _r(ev.group_separation),
        "group_nn_agreement": _r(ev.group_nn_agreement),
        "group_ari": _r(ev.group_ari),
    }
    # A figure that does not apply (agreement with one classifier, group scores without
    # groups) is left out rather than written as null: every column `dvc exp show` shows
    # then has a value.
    return {key: value for key, value in figures.items() if value is not None}


def _offdiag_mean(m: np.ndarray) -> float:
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def _cell(ev: Evaluation, i: int, j: int) -> str:
    return f"{ev.classes[j]} {ev.mean[i, j]:.2f} ± {ev.std[i, j]:.2f}"


def _table(ev: Evaluation, columns: list[int]) -> list[str]:
    """Paper-style table: one column per class, all other classes below it, most similar first."""
    ranked = [ranked_neighbours(ev.mean, i) for i in columns]
    lines = ["| " + " | ".join(f"**{ev.classes[i]}**" for i in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in range(len(ev.classes) - 1):
        lines.append(
            "| "
            + " | ".join(_cell(ev, i, r[row]) for i, r in zip(columns, ranked, strict=True))
            + " |"
        )
    return lines


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def render_report(ev: Evaluation, params: dict) -> str:
    names, c = ev.classes, len(ev.classes)
    lines = [
        "# Class similarity learned from the classifier's confusions",
        "",
        f"Cosine similarity between the word2vec class vectors ({ev.dim} dimensions), "
        f"{len(ev.classifiers)} classifier(s) x {ev.seeds} word2vec seed(s), trained on "
        f"{ev.n_pictures} pictures x top-{ev.top_k} guesses. Each similarity is the mean "
        f"over all of them ± its standard deviation across {ev.spread_of}"
        + (
            f" (each classifier's table averaged over its {ev.seeds} seeds first; the spread "
            "across seeds alone is the 'seed spread' below)."
            if len(ev.classifiers) > 1
            else "."
        ),
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| classes | {c} |",
        f"| classifiers | {len(ev.classifiers)} |",
        f"| agreement between classifiers (mean pairwise Spearman of their tables) | "
        f"{fmt(ev.classifier_agreement)} |",
        f"| spread across classifiers (mean std of a similarity) | "
        f"{fmt(_offdiag_mean(ev.classifier_std))} |",
        f"| spread across word2vec seeds (mean std of a similarity) | "
        f"{fmt(_offdiag_mean(ev.seed_std))} |",
        f"| Spearman vs confusion similarity | {fmt(ev.spearman)} |",
        f"| what the 2nd..k-th guesses alone say, Spearman vs top-1 mistakes | "
        f"{fmt(ev.secondary)} |",
        f"| mean off-diagonal cosine | {fmt(ev.mean_offdiag)} |",
        f"| collapsed | {'**YES**' if ev.collapsed else 'no'} |",
        f"| split-half reliability over word2vec seeds | {fmt(ev.reliability)} |",
        f"| noisy | {'**YES**' if ev.noisy else 'no'} |",
        f"| consensus embedding's own table vs the mean table (Spearman / max difference) | "
        f"{fmt(ev.consensus_agreement)} / {ev.consensus_max_diff:.4f} |",
        f"| group separation (within - across) | {fmt(ev.group_separation)} |",
        f"| nearest class in the same group | {fmt(ev.group_nn_agreement)} |",
        f"| ARI, clustering vs groups | {fmt(ev.group_ari)} |",
        "",
    ]
    if ev.collapsed:
        lines += ["> **Warning: the vectors look collapsed.**", ">"]
        lines += [f"> - {reason}" for reason in ev.collapse_reasons]
        lines.append("")
    if ev.noisy:
        lines += [
            "> **Warning: the table is noisy; its finer rankings are not to be trusted.**",
            ">",
        ]
        lines += [f"> - {reason}" for reason in ev.noise_reasons]
        lines.append("")
    iu = np.triu_indices(c, k=1)
    top = np.argsort(-ev.mean[iu], kind="stable")[:REPORT_TOP_PAIRS]
    lines += [
        "Most similar pairs: "
        + ", ".join(
            f"{names[iu[0][t]]}~{names[iu[1][t]]} {ev.mean[iu[0][t], iu[1][t]]:.2f}" for t in top
        ),
        "",
    ]

    if len(ev.classifiers) > 1:
        iu_all = np.triu_indices(c, k=1)
        lines += [
            "## Classifiers",
            "",
            "| classifier | top-1 accuracy (test) | Spearman of its table vs the mean |",
            "|---|---|---|",
        ]
        for name, acc, table in zip(ev.classifiers, ev.classifier_accuracy, ev.tables, strict=True):
            rho = spearmanr(table[iu_all], ev.mean[iu_all]).statistic
            lines.append(f"| {name} | {fmt(acc)} | {fmt(float(rho))} |")
        lines.append("")

    lines += _consensus_section(ev, params)

    if c <= params["table_max_classes"]:
        lines += [
            "## Similarity tables",
            "",
            "Each column ranks all other classes, most similar first.",
            "",
        ]
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


def _consensus_section(ev: Evaluation, params: dict) -> list[str]:
    """The consensus embedding: each class's nearest class in it and its dispersion."""
    cons, names = ev.consensus, ev.classes
    table = cons.table()
    order = np.argsort(-cons.dispersion, kind="stable")
    shown = order if len(names) <= params["table_max_classes"] else order[: params["top_n"]]
    runs = cons.aligned.shape[0]
    lines = [
        "## Consensus embedding",
        "",
        f"The {runs} runs' vectors (classifiers x word2vec seeds) rotated onto one reference "
        "and averaged (generalised Procrustes, `embedding/consensus.py`); its own cosine "
        f"table agrees with the mean table at Spearman {fmt(ev.consensus_agreement)} (largest "
        f"difference {ev.consensus_max_diff:.2f}). Dispersion: the mean of 1 - cosine between "
        "a class's vector in each run and its consensus vector; above "
        f"{params['unstable_dispersion']:g} (`evaluate.unstable_dispersion`) a class's place is "
        "not stable across runs.",
        "",
        "| class | dispersion | nearest class in the consensus |",
        "|---|---|---|",
    ]
    for i in shown:
        near = ranked_neighbours(table, int(i))[0]
        flag = " **not stable**" if int(i) in ev.unstable else ""
        lines.append(
            f"| {names[i]}{flag} | {cons.dispersion[i]:.3f} | {names[near]} {table[i, near]:.2f} |"
        )
    return [*lines, ""]


def warn_if_noisy(ev: Evaluation) -> None:
    for reason in ev.noise_reasons:
        print(f"warning: noisy similarity table: {reason}", file=sys.stderr)


def warn_if_collapsed(ev: Evaluation) -> None:
    if not ev.collapsed:
        return
    bar = "!" * 78
    lines = [bar, "WARNING: the class vectors look COLLAPSED; the figures are not to be trusted."]
    lines += [f"  - {reason}" for reason in ev.collapse_reasons]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr)
