"""The evaluate stage's text outputs: the metrics (headline scalars) and the report.

Writes nothing itself: `metrics_dict` and `render_report` return what the stage writes.
"""

from __future__ import annotations

import math
import sys

import numpy as np

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
    return {
        "classes": len(ev.classes),
        "seeds": ev.seeds,
        "spearman_vs_confusion": _r(ev.spearman),
        "mean_offdiag_cosine": _r(ev.mean_offdiag),
        "collapsed": ev.collapsed,
        "group_separation": _r(ev.group_separation),
        "group_nn_agreement": _r(ev.group_nn_agreement),
        "group_ari": _r(ev.group_ari),
    }


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
        f"mean ± std over {ev.seeds} seed(s); trained on {ev.n_pictures} pictures x "
        f"top-{ev.top_k} guesses.",
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| classes | {c} |",
        f"| Spearman vs confusion similarity | {fmt(ev.spearman)} |",
        f"| mean off-diagonal cosine | {fmt(ev.mean_offdiag)} |",
        f"| collapsed | {'**YES**' if ev.collapsed else 'no'} |",
        f"| group separation (within - across) | {fmt(ev.group_separation)} |",
        f"| nearest class in the same group | {fmt(ev.group_nn_agreement)} |",
        f"| ARI, clustering vs groups | {fmt(ev.group_ari)} |",
        "",
    ]
    if ev.collapsed:
        lines += ["> **Warning: the vectors look collapsed.**", ">"]
        lines += [f"> - {reason}" for reason in ev.collapse_reasons]
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


def warn_if_collapsed(ev: Evaluation) -> None:
    if not ev.collapsed:
        return
    bar = "!" * 78
    lines = [bar, "WARNING: the class vectors look COLLAPSED; the figures are not to be trusted."]
    lines += [f"  - {reason}" for reason in ev.collapse_reasons]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr)
