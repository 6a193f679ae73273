"""Classes the classifiers never saw (train.unseen): where each lands, and new or known?

Reads nothing itself but the reference table it is handed (`read_reference`: a similarity
CSV as the evaluate stage writes it, from a run where every class was trained); the
evaluate stage writes what `unseen_metrics` and `unseen_section` return. docs/unseen.md has
the method and the leave-one-out measurement on CIFAR-10.

Placement: an unseen class is a true class but never a guess; its vector comes from its
pictures' guesses alone (embedding/skipgram.py), so its row of the table says which known
classes its pictures are mistaken for. Each unseen class's known classes are listed by
cosine with their resampling intervals; where the reference has the class, the row is
compared with the reference's row over the known classes (Spearman) and nearest class.

Novelty: a per-picture score from the classifier's own output, higher = more likely new.
Every score below is computed where the predictions allow it; `evaluate.novelty_score` picks
the one the report leads with, and `max_prob` (the usual baseline) is always shown beside
it. From the top-k guesses (the pairs):
    max_prob   1 - p1                              (the most probable guess's probability)
    margin     1 - (p1 - p2)                       (top_k >= 2)
    entropy    entropy of (p1..pk, 1 - sum)        (the remainder as one outcome)
    spread     1 - |sum_r w_r u(g_r)|, w = p / sum p, u(g) the unit consensus vector of
               guess g: guesses spread over dissimilar classes, in the class-vector space
and from each picture's whole output, computed where the pairs are made (novelty.py):
max_logit and energy (logits files only), mahalanobis and relative_mahalanobis (the whole
ranking of the guesses against each known class's typical ranking, fitted on the known
classes' training pictures; from probabilities or logits).
AUROC: unseen-class pictures (all splits: the classifier never trained on them) against
the known classes' test pictures (every known picture without a test split), per
classifier, then averaged. "Called new": a score above the threshold that keeps
`evaluate.novelty_keep_known` of the known test pictures as known.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, spearmanr

from confusion_embeddings.config.evaluate import NOVELTY_SCORES, EvaluateConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding.consensus import unit
from confusion_embeddings.novelty import SCORES
from confusion_embeddings.pairs import Pairs

BASELINE = "max_prob"
# What leads where evaluate.novelty_score cannot be computed from the predictions at hand:
# the best of the scores every file with probabilities allows, on the leave-one-class-out
# runs (method_studies/novelty_study.json's best_from_probabilities; docs/unseen.md).
FALLBACK = "entropy"
NEAREST_LISTED = 3  # known classes listed per unseen class in the report
REFERENCE_HEADER = ["class", "neighbour", "cosine"]  # the first columns of the table CSV


@dataclass(frozen=True)
class Placement:
    """Where one unseen class lands among the known classes."""

    cls: int
    known: tuple[int, ...]  # the known classes, most similar first
    cosine: np.ndarray  # [K] their cosines, in that order
    low: np.ndarray  # [K] resampling interval (NaN without resampling)
    high: np.ndarray
    reference_nearest: int | None  # the reference row's nearest known class
    row_spearman: float | None  # this row vs the reference's, over the known classes

    @property
    def nearest(self) -> int:
        return self.known[0]

    @property
    def match(self) -> bool | None:
        return None if self.reference_nearest is None else self.nearest == self.reference_nearest


@dataclass(frozen=True)
class Novelty:
    """New-or-known scores against the known test pictures, averaged over classifiers."""

    score: str  # the one the report leads with (evaluate.novelty_score)
    keep_known: float
    auroc: dict[str, float]  # per score: all unseen pictures vs the known test pictures
    class_auroc: dict[int, dict[str, float]]  # per unseen class and score
    called_new: dict[int, tuple[int, int]]  # per unseen class: (called new, pictures), `score`
    asked: str = ""  # evaluate.novelty_score where these predictions cannot give it (then
    # `score` is FALLBACK): a score of logits from a probs file, or a learned one without a
    # "train" split


@dataclass(frozen=True)
class Unseen:
    placements: tuple[Placement, ...]
    novelty: Novelty | None  # None where the pairs carry no probabilities (a `topk` file)
    reference: str  # where the reference came from, or why there is none


def read_reference(path: str | Path) -> dict[tuple[str, str], float]:
    """{(class, neighbour): cosine} from a similarity table CSV (reports/similarity.csv of a
    run where every class was trained; `git show REV:reports/similarity.csv` gives one)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the reference table ({exc})") from None
    if not rows or rows[0][:3] != REFERENCE_HEADER:
        raise PipelineError(
            f"{path}: not a similarity table (its header must start with "
            f"{','.join(REFERENCE_HEADER)}, as reports/similarity.csv does)"
        )
    try:
        return {(r[0], r[1]): float(r[2]) for r in rows[1:] if r}
    except (IndexError, ValueError) as exc:
        raise PipelineError(f"{path}: a row is not 'class,neighbour,cosine' ({exc})") from None


def place(
    classes: tuple[str, ...],
    unseen: np.ndarray,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    reference: dict[tuple[str, str], float] | None,
) -> tuple[Placement, ...]:
    """Each unseen class's known classes by cosine, and its row against the reference."""
    known = np.array([i for i in range(len(classes)) if i not in set(unseen.tolist())])
    out = []
    for u in unseen.tolist():
        order = known[np.argsort(-mean[u, known], kind="stable")]
        ref_nearest, rho = _against_reference(classes, u, known, mean, reference)
        out.append(
            Placement(
                int(u), tuple(order.tolist()), mean[u, order], low[u, order], high[u, order],
                ref_nearest, rho,
            )
        )  # fmt: skip
    return tuple(out)


def _against_reference(classes, u: int, known: np.ndarray, mean: np.ndarray, reference):
    """(the reference row's nearest known class, Spearman of the two rows) over the known
    classes the reference lists for class u; (None, None) with fewer than three."""
    if not reference:
        return None, None
    listed = [j for j in known.tolist() if (classes[u], classes[j]) in reference]
    if len(listed) < 3:
        return None, None
    ref = np.array([reference[classes[u], classes[j]] for j in listed])
    nearest = listed[int(np.argmax(ref))]
    rho = spearmanr(mean[u, listed], ref).statistic
    return nearest, float(rho) if np.isfinite(rho) else None


def novelty_scores(pairs: Pairs, vectors: np.ndarray) -> np.ndarray:
    """[pictures, len(NOVELTY_SCORES)] scores (higher = more likely new), NaN where a score
    needs what the pairs lack (margin with top_k = 1). `vectors` [C, dim]: the consensus."""
    k = pairs.top_k
    p = pairs.prob.reshape(-1, k).astype(np.float64)
    g = pairs.guess.reshape(-1, k)
    rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        rlogr = np.where(rest > 0, rest * np.log(rest), 0.0)
        w = p / p.sum(axis=1, keepdims=True)
    mixed = np.einsum("nk,nkd->nd", w, unit(vectors.astype(np.float64))[g])
    margin = 1.0 - (p[:, 0] - p[:, 1]) if k >= 2 else np.full(len(p), np.nan)
    spread = 1.0 - np.linalg.norm(mixed, axis=1)
    whole = [  # novelty.py's, computed from each picture's whole output where it was given
        (pairs.novelty or {}).get(name, np.full(pairs.true.shape, np.nan))[::k] for name in SCORES
    ]
    return np.stack([1.0 - p[:, 0], margin, -(plogp + rlogr), spread, *whole], axis=1)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive's score > a negative's), ties counted half; None if a side is empty."""
    positive, negative = positive[np.isfinite(positive)], negative[np.isfinite(negative)]
    if not len(positive) or not len(negative):
        return None
    u = mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u / (len(positive) * len(negative)))


def novelty(pairs: Pairs, vectors: np.ndarray, score: str, keep_known: float) -> Novelty | None:
    """AUROC of every score and the pictures called new (module docstring); None without
    probabilities."""
    if np.isnan(pairs.prob).any():
        return None
    k = pairs.top_k
    scores = novelty_scores(pairs, vectors)
    true, who = pairs.true[::k], pairs.classifier[::k]
    split = pairs.split[::k]
    test = pairs.splits.index("test") if "test" in pairs.splits else None
    unseen = pairs.unseen_ids
    is_unseen = np.isin(true, unseen)
    known = ~is_unseen & ((split == test) if test is not None else True)
    chosen = NOVELTY_SCORES.index(score)
    asked = ""
    if not np.isfinite(scores[:, chosen]).any():  # not computable from these predictions
        asked, score, chosen = score, FALLBACK, NOVELTY_SCORES.index(FALLBACK)
    per: dict[int | None, dict[str, list[float]]] = {}
    counts = {int(u): [0, 0] for u in unseen}
    for m in range(len(pairs.classifiers)):
        mine = who == m
        base = scores[mine & known]
        for group in (None, *unseen.tolist()):
            pos = mine & (is_unseen if group is None else true == group)
            for s, name in enumerate(NOVELTY_SCORES):
                value = auroc(scores[pos, s], base[:, s])
                if value is not None:
                    per.setdefault(group, {}).setdefault(name, []).append(value)
        threshold = np.quantile(base[:, chosen], keep_known) if len(base) else np.inf
        for u in unseen.tolist():
            pos = mine & (true == u)
            counts[u][0] += int((scores[pos, chosen] > threshold).sum())
            counts[u][1] += int(pos.sum())
    mean = {g: {n: float(np.mean(v)) for n, v in d.items()} for g, d in per.items()}
    return Novelty(
        score,
        keep_known,
        mean.get(None, {}),
        {int(u): mean.get(int(u), {}) for u in unseen},
        {u: (c[0], c[1]) for u, c in counts.items()},
        asked,
    )


def assess_unseen(
    pairs: Pairs,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    vectors: np.ndarray,
    config: EvaluateConfig,
    reference: tuple[str, dict[tuple[str, str], float]] | None = None,
) -> Unseen | None:
    """Placement and novelty of the pairs' unseen classes (None when there are none).
    `reference` is (where it came from, read_reference's table)."""
    if not pairs.unseen:
        return None
    where, table = reference if reference else ("no reference table given", None)
    return Unseen(
        place(pairs.classes, pairs.unseen_ids, mean, low, high, table),
        novelty(pairs, vectors, config.novelty_score, config.novelty_keep_known),
        where,
    )


def unseen_metrics(u: Unseen) -> dict[str, float | int]:
    """unseen_nearest_match (share of unseen classes whose nearest known class is the
    reference's), unseen_row_spearman (mean), novelty_auroc (the evaluate.novelty_score
    chosen) with the max_prob baseline beside it, every other score's novelty_auroc_<score>
    where the predictions allow it, and the share of pictures called new."""
    out: dict[str, float | int] = {"unseen_classes": len(u.placements)}
    matches = [p.match for p in u.placements if p.match is not None]
    rhos = [p.row_spearman for p in u.placements if p.row_spearman is not None]
    if matches:
        out["unseen_nearest_match"] = round(float(np.mean(matches)), 4)
    if rhos:
        out["unseen_row_spearman"] = round(float(np.mean(rhos)), 4)
    if u.novelty is not None:
        nov = u.novelty
        for key, name in (("novelty_auroc", nov.score), (f"novelty_auroc_{BASELINE}", BASELINE)):
            if name in nov.auroc:
                out[key] = round(nov.auroc[name], 4)
        for name in NOVELTY_SCORES:  # then every other score these predictions allow
            if name != BASELINE and name in nov.auroc:
                out[f"novelty_auroc_{name}"] = round(nov.auroc[name], 4)
        called = sum(c for c, _ in nov.called_new.values())
        total = sum(n for _, n in nov.called_new.values())
        if total:
            out["unseen_called_new"] = round(called / total, 4)
    return out


def summary_lines(u: Unseen, classes: tuple[str, ...]) -> list[str]:
    """One short line per unseen class for the terminal: where it lands, against the
    reference, and how many of its pictures are called new."""
    lines = []
    for p in u.placements:
        j = p.nearest
        ref = "" if p.reference_nearest is None else f"; reference {classes[p.reference_nearest]}"
        rho = "" if p.row_spearman is None else f", row Spearman {p.row_spearman:.2f}"
        lines.append(f"unseen {classes[p.cls]}: nearest {classes[j]} {p.cosine[0]:.2f}{ref}{rho}")
        if u.novelty is not None:
            called, total = u.novelty.called_new[p.cls]
            auroc = u.novelty.class_auroc[p.cls].get(u.novelty.score)
            lines.append(
                f"  new-or-known AUROC {_f(auroc)} ({u.novelty.score}); called new {called}/{total}"
            )
    return lines


def unseen_section(u: Unseen, classes: tuple[str, ...], confidence: float) -> list[str]:
    """The report's section: one block per unseen class, then new-or-known."""
    lines = [
        "## Classes the classifiers never saw",
        "",
        f"Unseen (`train.unseen`): {', '.join(classes[p.cls] for p in u.placements)}. Each is "
        "placed by its pictures' guesses alone: the known classes it is mistaken for. "
        f"Nearest known classes with their {confidence:.0%} resampling intervals; the row is "
        f"compared with the reference table ({u.reference}).",
        "",
        "| unseen | nearest known classes | reference's nearest | row Spearman |",
        "|---|---|---|---|",
    ]
    for p in u.placements:
        listed = zip(p.known, p.cosine, p.low, p.high, strict=True)
        near = ", ".join(
            f"{classes[j]} {c:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else
            f"{classes[j]} {c:.2f}"
            for j, c, lo, hi in list(listed)[:NEAREST_LISTED]
        )  # fmt: skip
        ref = "-" if p.reference_nearest is None else classes[p.reference_nearest]
        mark = "" if p.match in (None, True) else " (differs)"
        rho = "-" if p.row_spearman is None else f"{p.row_spearman:.2f}"
        lines.append(f"| {classes[p.cls]} | {near} | {ref}{mark} | {rho} |")
    return [*lines, "", *_novelty_lines(u.novelty, classes)]


_NEEDS = {
    "max_logit": "needs logits; these predictions hold probabilities",
    "energy": "needs logits; these predictions hold probabilities",
    "mahalanobis": 'is fitted on a "train" split these predictions lack',
    "relative_mahalanobis": 'is fitted on a "train" split these predictions lack',
}


def _novelty_lines(nov: Novelty | None, classes: tuple[str, ...]) -> list[str]:
    if nov is None:
        return ["New or known: not measured (the predictions hold guesses, no probabilities).", ""]
    shown = list(dict.fromkeys((nov.score, BASELINE)))
    lines = [
        "### New or known?",
        "",
        f"AUROC of telling the unseen classes' pictures from the known classes' test pictures "
        f"by `{nov.score}` (`evaluate.novelty_score`"
        + (f" asks for `{nov.asked}`, which {_NEEDS.get(nov.asked, '')}" if nov.asked else "")
        + f"), with `{BASELINE}` (1 - top "
        "probability) beside it. Called new: above the threshold that keeps "
        f"{nov.keep_known:.0%} of the known test pictures as known "
        "(`evaluate.novelty_keep_known`).",
        "",
        "| unseen | " + " | ".join(f"AUROC {s}" for s in shown) + " | called new |",
        "|---|" + "---|" * len(shown) + "---|",
    ]
    for u, (called, total) in nov.called_new.items():
        aurocs = " | ".join(_f(nov.class_auroc[u].get(s)) for s in shown)
        share = f"{called}/{total} ({called / total:.0%})" if total else "-"
        lines.append(f"| {classes[u]} | {aurocs} | {share} |")
    every = ", ".join(f"{s} {_f(nov.auroc[s])}" for s in NOVELTY_SCORES if s in nov.auroc)
    return [*lines, "", f"Every score's AUROC, all unseen pictures: {every}.", ""]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
