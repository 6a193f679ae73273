"""The evaluate stage's text outputs: the metrics (headline scalars) and the report.

Writes nothing itself: `metrics_dict` and `render_report` return what the stage writes.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy.stats import spearmanr

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.evaluation.scores import Evaluation
from confusion_embeddings.evaluation.uncertainty import ranked_neighbours
from confusion_embeddings.evaluation.unseen import summary_lines, unseen_metrics, unseen_section

REPORT_TOP_PAIRS = 10  # most similar pairs named in the report's summary
JSON_DECIMALS = 4


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), JSON_DECIMALS)


def metrics_dict(ev: Evaluation) -> dict:
    """Headline scalars only (tens, not hundreds, of `dvc exp show` columns), the one to read
    first first: the tables themselves are plot data (plots.similarity_rows) and the report."""
    u = ev.uncertainty
    figures = {
        "table_reliability": _r(u.reliability),
        "classifiers": len(ev.classifiers),
        "interval_halfwidth": _r(ev.mean_half_width),
        "nearest_share_min": _r(float(u.nearest_share.min())) if u.replicates else None,
        "picture_spread": _r(u.picture_part) if u.replicates else None,
        "classifier_spread": _r(u.classifier_part),
        "classifier_agreement": _r(ev.classifier_agreement),
        # gensim's seeds only: the jax engine's table is one deterministic fit.
        "seed_spread": _r(_offdiag_mean(ev.seed_std)) if ev.seeds > 1 else None,
        "seed_reliability": _r(ev.reliability),
        "spearman_vs_confusion": _r(ev.spearman),
        "secondary_vs_confusion": _r(ev.secondary),
        "mean_offdiag_cosine": _r(ev.mean_offdiag),
        "collapsed": ev.collapsed,
        "noisy": ev.noisy,
        "flat_guesses": ev.flat_guesses is not None,
        "unstable_ranks": len(ev.unstable_nearest),
        "consensus_vs_mean_table": _r(ev.consensus_agreement),
        "least_stable_dispersion": _r(float(ev.consensus.dispersion.max())),
        "group_separation": _r(ev.group_separation),
        "group_nn_agreement": _r(ev.group_nn_agreement),
        "group_ari": _r(ev.group_ari),
    }
    if ev.unseen is not None:
        figures.update(unseen_metrics(ev.unseen))
    # A figure that does not apply (agreement with one classifier, group scores without
    # groups) is left out rather than written as null: every column `dvc exp show` shows
    # then has a value.
    return {key: value for key, value in figures.items() if value is not None}


def _offdiag_mean(m: np.ndarray) -> float:
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def _cell(ev: Evaluation, i: int, j: int) -> str:
    half = ev.half_width[i, j]
    spread = "" if np.isnan(half) else f" ± {half:.2f}"
    return f"{ev.classes[j]} {ev.mean[i, j]:.2f}{spread}"


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


def _trust_lines(ev: Evaluation) -> list[str]:
    """The report's opening: the figure to read first, what the ± covers, the warnings."""
    u = ev.uncertainty
    lines = [
        f"**Table reliability {fmt(u.reliability)}**: how alike two redraws of the pictures"
        + (" and classifiers" if len(ev.classifiers) > 1 else "")
        + " rank the class pairs (mean Spearman of two bootstrap replicates; 1 = the same "
        "order). Read it first; compare it between experiments before any other figure.",
        "",
        f"{ev.covers}."
        + (
            f" Spread of a similarity from the pictures {u.picture_part:.3f}, from the "
            f"classifiers {u.classifier_part:.3f}: the {ev.uncertainty.dominant} dominate."
            if u.classifier_part is not None
            else ""
        ),
        "",
    ]
    if ev.warnings:
        title = (
            "the vectors look collapsed; the figures are not to be trusted" if ev.collapsed else ""
        )
        lines += [f"> **Warnings{': ' + title if title else ''}**", ">"]
        lines += [f"> - {w}" for w in ev.warnings]
        lines.append("")
    return lines


def render_report(ev: Evaluation, config: EvaluateConfig) -> str:
    """reports/similarity.md: how far to trust the table, the summary, the classifiers,
    the consensus vectors, the tables (or neighbour lists) and the stability of each class."""
    lines = [
        "# Class similarity learned from the classifier's confusions",
        "",
        *_trust_lines(ev),
        *_what_lines(ev),
        *_summary_section(ev, config),
        *(unseen_section(ev.unseen, ev.classes, ev.uncertainty.confidence) if ev.unseen else []),
        *_classifiers_section(ev),
        *_consensus_section(ev, config),
        *_tables_section(ev, config),
        *_stability_section(ev),
    ]
    return "\n".join(lines)


def _what_lines(ev: Evaluation) -> list[str]:
    """One sentence: what the similarities are cosines of, and how they were averaged."""
    return [
        f"Cosine similarity between the class vectors ({ev.dim} dimensions, engine "
        f"{ev.engine}), trained on {ev.n_pictures} pictures x top-{ev.top_k} guesses"
        + (
            f" of {len(ev.classifiers)} classifiers; each similarity is the mean of their tables"
            if len(ev.classifiers) > 1
            else " of one classifier"
        )
        + (f" (each the mean over {ev.seeds} word2vec seeds)" if ev.seeds > 1 else "")
        + ".",
        "",
    ]


def _summary_section(ev: Evaluation, config: EvaluateConfig) -> list[str]:
    """The headline figures as a table, then the most similar class pairs."""
    names, c = ev.classes, len(ev.classes)
    u = ev.uncertainty
    # Where some classes were never trained on, the figures read against the guesses are
    # over the known classes (scores.py).
    known = " (known classes)" if ev.unseen else ""
    lines = [
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| table reliability under resampling | {fmt(u.reliability)} |",
        f"| mean ± of a similarity ({u.confidence:.0%} interval, half width) | "
        f"{fmt(ev.mean_half_width)} |",
        f"| classes whose nearest class holds in < {config.nearest_stability:.0%} of redraws | "
        f"{len(ev.unstable_nearest)} |",
        f"| classes | {c} |",
        f"| classifiers | {len(ev.classifiers)} |",
        f"| agreement between classifiers (mean pairwise Spearman of their tables) | "
        f"{fmt(ev.classifier_agreement)} |",
        f"| Spearman vs confusion similarity{known} | {fmt(ev.spearman)} |",
        f"| what the 2nd..k-th guesses alone say, Spearman vs top-1 mistakes{known} | "
        f"{fmt(ev.secondary)} |",
        f"| mean off-diagonal cosine | {fmt(ev.mean_offdiag)} |",
        f"| collapsed | {'**YES**' if ev.collapsed else 'no'} |",
        f"| noisy | {'**YES**' if ev.noisy else 'no'} |",
    ]
    if ev.seeds > 1:
        lines += [
            f"| spread across word2vec seeds (mean std of a similarity) | "
            f"{fmt(_offdiag_mean(ev.seed_std))} |",
            f"| split-half reliability over word2vec seeds | {fmt(ev.reliability)} |",
        ]
    lines += [
        f"| consensus embedding's own table vs the mean table (Spearman / max difference) | "
        f"{fmt(ev.consensus_agreement)} / {ev.consensus_max_diff:.4f} |",
        f"| group separation (within - across) | {fmt(ev.group_separation)} |",
        f"| nearest class in the same group | {fmt(ev.group_nn_agreement)} |",
        f"| ARI, clustering vs groups | {fmt(ev.group_ari)} |",
        "",
    ]
    iu = np.triu_indices(c, k=1)
    top = np.argsort(-ev.mean[iu], kind="stable")[:REPORT_TOP_PAIRS]
    return lines + [
        "Most similar pairs: "
        + ", ".join(
            f"{names[iu[0][t]]}~{names[iu[1][t]]} {ev.mean[iu[0][t], iu[1][t]]:.2f}" for t in top
        ),
        "",
    ]


def _classifiers_section(ev: Evaluation) -> list[str]:
    """Each classifier's accuracy and how its table ranks the pairs against the mean (none
    with one classifier)."""
    if len(ev.classifiers) < 2:
        return []
    iu = np.triu_indices(len(ev.classes), k=1)
    lines = [
        "## Classifiers",
        "",
        f"| classifier | top-1 accuracy (test{', known classes' if ev.unseen else ''}) | "
        "Spearman of its table vs the mean |",
        "|---|---|---|",
    ]
    for name, acc, table in zip(ev.classifiers, ev.classifier_accuracy, ev.tables, strict=True):
        rho = spearmanr(table[iu], ev.mean[iu]).statistic
        lines.append(f"| {name} | {fmt(acc)} | {fmt(float(rho))} |")
    return [*lines, ""]


def _tables_section(ev: Evaluation, config: EvaluateConfig) -> list[str]:
    """The paper's tables, one per group (up to evaluate.table_max_classes classes), else
    each class's nearest evaluate.top_n classes."""
    names, c = ev.classes, len(ev.classes)
    if c <= config.table_max_classes:
        lines = [
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
        return lines
    n = min(config.top_n, c - 1)
    group_names = list((ev.groups or {}).keys())
    lines = [f"## Nearest {n} classes of each class", ""]
    for i, name in enumerate(names):
        tag = f" ({group_names[ev.group_labels[i]]})" if ev.group_labels[i] >= 0 else ""
        near = ", ".join(
            f"{_cell(ev, i, j)}{_ranks(ev, i, j, ' (rank ', ')')}"
            for j in ranked_neighbours(ev.mean, i)[:n]
        )
        lines.append(f"- **{name}**{tag}: {near}")
    return [*lines, ""]


def _ranks(ev: Evaluation, i: int, j: int, before: str = "", after: str = "") -> str:
    """Neighbour j's rank interval among class i's ("2-4"), or "" without resampling."""
    lo, hi = ev.uncertainty.rank_low[i, j], ev.uncertainty.rank_high[i, j]
    if not lo:
        return ""
    return f"{before}{lo}{'' if lo == hi else f'-{hi}'}{after}"


def _stability_section(ev: Evaluation) -> list[str]:
    """Per class: how often its nearest class holds, and its neighbours' rank intervals."""
    u, names = ev.uncertainty, ev.classes
    if not u.replicates:
        return []
    listed = min(len(names) - 1, 5)
    lines = [
        "## How stable each class's neighbours are",
        "",
        f"Over {u.replicates} redraws: how often a class's nearest class is the table's, and "
        f"the {u.confidence:.0%} interval of each of its {listed} nearest classes' rank "
        "(1 = nearest).",
        "",
        "| class | nearest class (share of redraws) | rank intervals |",
        "|---|---|---|",
    ]
    for i, name in enumerate(names):
        near = int(u.nearest[i])
        ranks = ", ".join(
            f"{names[j]} {_ranks(ev, i, int(j))}" for j in ranked_neighbours(ev.mean, i)[:listed]
        )
        flag = " **unstable**" if i in ev.unstable_nearest else ""
        lines.append(
            f"| {name}{flag} | {name} -> {names[near]} in {u.nearest_share[i]:.0%} | {ranks} |"
        )
    return [*lines, ""]


def _consensus_section(ev: Evaluation, config: EvaluateConfig) -> list[str]:
    """The consensus embedding: each class's nearest class in it and its dispersion."""
    cons, names = ev.consensus, ev.classes
    table = cons.table()
    order = np.argsort(-cons.dispersion, kind="stable")
    shown = order if len(names) <= config.table_max_classes else order[: config.top_n]
    runs = cons.aligned.shape[0]
    lines = [
        "## Consensus embedding",
        "",
        "The runs' vectors (classifiers"
        + (" x word2vec seeds" if ev.seeds > 1 else "")
        + ") rotated onto one reference and averaged (generalised Procrustes, "
        "`embedding/consensus.py`); its own cosine table agrees with the mean table at "
        f"Spearman {fmt(ev.consensus_agreement)} (largest difference "
        f"{ev.consensus_max_diff:.2f}). Dispersion: the mean of 1 - cosine between a class's "
        f"vector in each of the {runs} refits on redrawn pictures and its consensus vector; "
        f"above {config.unstable_dispersion:g} (`evaluate.unstable_dispersion`) a class's "
        "place is not stable.",
        "",
        f"The class map (`plots/class_map.png`: metric MDS on 1 - cosine) has stress "
        f"{ev.class_map.stress:.3f} and keeps the nearest class of "
        f"{ev.class_map.nearest_kept:.0%} of the classes.",
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


def print_warnings(ev: Evaluation) -> None:
    """Every warning on the terminal, one line each; collapsed vectors framed to stand out."""
    if ev.collapsed:
        bar = "!" * 78
        lines = [
            bar,
            "WARNING: the class vectors look COLLAPSED; the figures are not to be trusted.",
        ]
        lines += [f"  - {reason}" for reason in ev.collapse_reasons]
        print("\n".join([*lines, bar]), file=sys.stderr)
    for line in ev.warnings:
        if not line.startswith("collapsed vectors: "):
            print(f"warning: {line}", file=sys.stderr)


def print_summary(ev: Evaluation, report: object) -> None:
    """What the evaluate stage prints: the warnings, a line per unseen class, and one line of
    headline figures naming the `report` file."""
    print_warnings(ev)
    for line in summary_lines(ev.unseen, ev.classes) if ev.unseen else []:
        print(line)
    print(
        f"evaluate: table reliability {fmt(ev.uncertainty.reliability)}, Spearman vs confusion "
        f"{fmt(ev.spearman)}, collapsed {ev.collapsed}, noisy {ev.noisy}; classifier "
        f"agreement {fmt(ev.classifier_agreement)}; report {report}"
    )
