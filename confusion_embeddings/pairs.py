"""(true class, k-th guess) pairs from a classifier's top-k guesses, and the pairs file.

Reads: one predictions file per classifier (format: predictions.py), with the pairs
config (config/pairs.py: top_k, block_size).

Writes (write_pairs, into the folder the pairs stage names):
  pairs.npz         P = N * top_k pairs, picture-major (picture i's pairs are rows
                    i*top_k .. i*top_k + top_k - 1, in rank order):
                      true     int32 [P]  true class index
                      guess    int32 [P]  the class guessed at `rank`
                      rank     int8  [P]  1 = most probable (int16 if top_k > 127)
                      prob     float32 [P] the guess's probability (softmax of logits);
                                           NaN for a `topk` file, which has none
                      split    int8  [P]  index into `splits`, -1 when unknown
                      classes  str [C], splits str [S] (S may be 0)
                      groups   str []     JSON {group: [classes]} from the predictions
                                           file, or "null"
                      classifier int16 [P] index into `classifiers`, whose pair it is
                      classifiers str [M] one name per classifier (predictions file)
                      unseen   str [u]    only where the predictions name unseen classes:
                                          classes that are a true class, never a guess
                      novelty_<score> float32 [N] only with unseen classes: each picture's
                                          new-or-known scores that need its whole output
                                          (novelty.py), classifier after classifier
                    Written without timestamps, so equal inputs give equal bytes.
  confusion.csv     header `actual,predicted,count`: the top-1 guesses of the test pictures
                    (every picture where there is no test split) of every classifier, as
                    counts per non-empty (true, guess) cell, class names as values: the data
                    of the `confusion_counts` plot template (.dvc/plots/).
pairs_metrics: {"pictures", "classes", "top_k", "pairs", "top1_accuracy": {"all",
<split>...}, "topk_accuracy": {...}}; the accuracies over the known classes' pictures, and
with unseen classes also "unseen": [names] and "unseen_pictures".
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import save_npz
from confusion_embeddings.core.params import param_ref
from confusion_embeddings.novelty import picture_scores
from confusion_embeddings.predictions import Predictions, load_predictions

PAIRS_FILE = "pairs.npz"
NOVELTY_PREFIX = "novelty_"  # pairs.npz keys of the per-picture novelty.py scores
# The confusion plot data: every non-empty cell up to this many classes, beyond the
# CONFUSION_MAX_CELLS most frequent (a plot of a million cells shows nothing).
CONFUSION_ALL_CELLS_MAX_CLASSES = 50
CONFUSION_MAX_CELLS = 2500
CONFUSION_FILE = "confusion.csv"
# Pairs' arrays with one entry per pair (besides `classifier`, whose meaning is per study).
PER_PAIR = ("true", "guess", "rank", "prob", "split")


def count_matrix(true: np.ndarray, guess: np.ndarray, n_classes: int) -> np.ndarray:
    """Directed pair counts: [C, C] int64, row = true class, column = guess (not symmetrised)."""
    flat = true.astype(np.int64) * n_classes + guess.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class Pairs:
    """The pairs of one or more classifiers' predictions files (see the module docstring
    for each array); `classifier` says whose each pair is."""

    true: np.ndarray
    guess: np.ndarray
    rank: np.ndarray
    prob: np.ndarray
    split: np.ndarray
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    groups: dict[str, list[str]] | None
    top_k: int
    classifier: np.ndarray  # int16 [P], index into `classifiers`
    classifiers: tuple[str, ...] = ("classifier",)
    unseen: tuple[str, ...] = ()  # classes never trained on: a true class, never a guess
    # Only with unseen classes: each picture's new-or-known scores that need its whole
    # output (novelty.py), {score: float32 [P]}, repeated over the picture's k pairs.
    novelty: dict[str, np.ndarray] | None = None

    @property
    def unseen_ids(self) -> np.ndarray:
        """Class indices of `unseen`, ascending (int [u])."""
        return np.array(sorted(self.classes.index(c) for c in self.unseen), dtype=np.int64)

    @property
    def n_pictures(self) -> int:
        """Pictures over all classifiers (a picture two classifiers predicted counts twice)."""
        return self.true.shape[0] // self.top_k

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def rows(self, keep: np.ndarray) -> Pairs:
        """The pairs where the boolean mask `keep` [P] holds, of the same classifiers."""
        arrays = {what: getattr(self, what)[keep] for what in (*PER_PAIR, "classifier")}
        novelty = {name: v[keep] for name, v in self.novelty.items()} if self.novelty else None
        return replace(self, **arrays, novelty=novelty)

    def of(self, index: int) -> Pairs:
        """The pairs of one classifier."""
        part = self.rows(self.classifier == index)
        return replace(
            part,
            classifier=np.zeros(len(part.classifier), np.int16),
            classifiers=(self.classifiers[index],),
        )


# --------------------------------------------------------------------------- core


def _check_top_k(top_k: int, pred: Predictions) -> None:
    known = pred.n_classes - len(pred.unseen)
    if top_k >= known:
        unseen = f" known to the classifier (of {pred.n_classes})" if pred.unseen else ""
        raise PipelineError(
            f"{param_ref('pairs', 'top_k', top_k)} must be smaller than the number of classes "
            f"C = {known}{unseen} in {pred.path}"
        )
    if pred.kind == "topk" and top_k > pred.width:
        raise PipelineError(
            f"{param_ref('pairs', 'top_k', top_k)} exceeds the k = {pred.width} guesses per "
            "picture "
            f"stored in {pred.path} ('topk'); lower pairs.top_k or store more guesses"
        )


def build_pairs(pred: Predictions, top_k: int, block_size: int, name: str | None = None) -> Pairs:
    """Form the top_k pairs of every picture, reading the scores block by block.

    Dense scores go through one jitted top-k whose input is always [min(block_size, N), C]
    (the last block is zero-padded), so it compiles once and memory stays flat whatever N is.
    """
    _check_top_k(top_k, pred)
    n, k = pred.n, top_k
    blocked = [pred.classes.index(c) for c in pred.unseen]  # never a guess
    guess = np.empty((n, k), np.int32)
    prob = np.empty((n, k), np.float32)
    start = 0
    if pred.kind == "topk":
        for block in pred.blocks(block_size):
            guess[start : start + len(block)] = block[:, :k]  # blocks refuse unseen guesses
            start += len(block)
        prob.fill(np.nan)
    else:
        # Imported here: JAX loads only where pairs are made, not where they are read.
        from confusion_embeddings.topk import topk_block

        rows = min(block_size, n)  # fixed for the whole run, so still one compilation
        padded = np.zeros((rows, pred.n_classes), np.float32)
        for block in pred.blocks(rows):
            b = len(block)
            padded[:b] = block
            padded[b:] = 0.0
            padded[:, blocked] = -np.inf  # below any probability or logit
            idx, val = topk_block(padded, k=k, from_logits=pred.kind == "logits")
            # np.asarray waits for the result, so `padded` is free to be refilled next.
            guess[start : start + b] = np.asarray(idx)[:b]
            prob[start : start + b] = np.asarray(val)[:b]
            start += b

    split = (
        np.full(n * k, -1, np.int8)
        if pred.split is None
        else np.repeat(pred.split.astype(np.int8), k)
    )
    return Pairs(
        true=np.repeat(pred.labels.astype(np.int32), k),
        guess=guess.reshape(-1),
        rank=np.tile(np.arange(1, k + 1, dtype=np.int8 if k <= 127 else np.int16), n),
        prob=prob.reshape(-1),
        split=split,
        classes=pred.classes,
        splits=pred.splits,
        groups=pred.groups,
        top_k=k,
        classifier=np.zeros(n * k, np.int16),
        classifiers=(name or pred.path.stem,),
        unseen=pred.unseen,
        novelty=_novelty(pred, block_size, k),
    )


def _novelty(pred: Predictions, block_size: int, k: int) -> dict[str, np.ndarray] | None:
    """novelty.py's per-picture scores, repeated over each picture's k pairs."""
    scores = picture_scores(pred, block_size)
    return {name: np.repeat(v, k) for name, v in scores.items()} if scores else None


def combine(parts: list[Pairs]) -> Pairs:
    """The pairs of several classifiers as one; they must name the same classes, splits and
    groups (each part's own `classifiers` name is kept)."""
    first = parts[0]
    for part in parts[1:]:
        for what in ("classes", "splits", "groups", "top_k", "unseen"):
            if getattr(part, what) != getattr(first, what):
                raise PipelineError(
                    f"predictions of {part.classifiers[0]} and {first.classifiers[0]} differ "
                    f"in their {what}; the classifiers of one study must predict the same "
                    "classes and splits"
                )
    names = tuple(name for part in parts for name in part.classifiers)
    if len(set(names)) != len(names):
        raise PipelineError(f"two classifiers share a name in {list(names)}")
    index = np.concatenate([np.full(len(part.true), i, np.int16) for i, part in enumerate(parts)])
    joined = {what: np.concatenate([getattr(part, what) for part in parts]) for what in PER_PAIR}
    novelty = None
    if all(part.novelty for part in parts):
        novelty = {n: np.concatenate([p.novelty[n] for p in parts]) for n in first.novelty}
    return replace(first, **joined, classifier=index, classifiers=names, novelty=novelty)


def make_pairs(predictions: list[tuple[str, Predictions]], config: PairsConfig) -> Pairs:
    """The pairs of every (name, predictions) classifier."""
    return combine(
        [build_pairs(p, config.top_k, config.block_size, name) for name, p in predictions]
    )


def pairs_metrics(pairs: Pairs) -> dict:
    """Counts, and top-1 / top-k accuracy overall and per split (6 decimals)."""
    k = pairs.top_k
    true = pairs.true.reshape(-1, k)[:, 0]
    hits = pairs.guess.reshape(-1, k) == true[:, None]
    top1, topk = hits[:, 0], hits.any(axis=1)
    split = pairs.split.reshape(-1, k)[:, 0]
    known = ~np.isin(true, pairs.unseen_ids)  # an unseen class's picture is never right

    def rate(correct: np.ndarray, mask: np.ndarray | None) -> float | None:
        chosen = correct[known] if mask is None else correct[mask & known]
        return round(float(chosen.mean()), 6) if chosen.size else None

    def per_split(correct: np.ndarray) -> dict[str, float | None]:
        out = {"all": rate(correct, None)}
        for i, name in enumerate(pairs.splits):
            out[name] = rate(correct, split == i)
        return out

    return {
        "classifiers": len(pairs.classifiers),
        "pictures": pairs.n_pictures,
        "classes": pairs.n_classes,
        "top_k": k,
        "pairs": int(pairs.true.shape[0]),
        "top1_accuracy": per_split(top1),
        "topk_accuracy": per_split(topk),
        **(
            {"unseen": list(pairs.unseen), "unseen_pictures": int((~known).sum())}
            if pairs.unseen
            else {}
        ),
    }


# --------------------------------------------------------------------------- files


SEED = "{seed}"  # where a --predictions pattern puts a classifier's seed


def predictions_files(path: str | Path, seeds: list[int] | None) -> list[tuple[str, Path]]:
    """(classifier name, file) for every classifier to read: the file `path`, or with `seeds`
    the file of each seed, `path` being a pattern with {seed} where the seed goes (dvc.yaml
    gives it, e.g. data/predictions/seed_{seed}.npz). The name is the file's stem."""
    path = str(path)
    if seeds is None:
        return [(Path(path).stem, Path(path))]
    if SEED not in path:
        raise PipelineError(f"--predictions {path}: with --seeds, a pattern with {SEED} in it")
    files = [Path(path.replace(SEED, str(s))) for s in seeds]
    return [(file.stem, file) for file in files]


def read_classifiers(
    files: list[tuple[str, Path]], config: PairsConfig
) -> list[tuple[str, Predictions]]:
    """(name, predictions) of every (name, file). Values are checked later, block by block,
    as build_pairs reads them. A missing file that params `pairs.predictions` named (a
    study's) is refused naming that param."""
    predictions = []
    for name, file in files:
        if not file.exists() and config.predictions == str(file):
            raise PipelineError(
                f"{param_ref('pairs', 'predictions', config.predictions)} names no file; "
                "point it at your predictions file (.npz, kept under inputs/)"
            )
        predictions.append((name, load_predictions(file, check_values=False)))
    return predictions


def summary_line(metrics: dict) -> str:
    """One line on what pairs_metrics measured, as the stage prints it."""
    k = metrics["top_k"]
    return (
        f"pairs: {metrics['classifiers']} classifier(s), {metrics['pictures']} pictures x "
        f"top-{k} -> {metrics['pairs']} pairs; top-1 accuracy "
        f"{metrics['top1_accuracy']['all']:.4f}, top-{k} {metrics['topk_accuracy']['all']:.4f}"
    )


def delete_stale_predictions(pattern: str | Path, seeds: list[int]) -> list[Path]:
    """Delete the predictions files matching `pattern` (predictions_files) whose seed is no
    longer in `seeds`, and return them: DVC leaves a removed stage's output in place, and
    their folder is the pairs stage's dependency, so a stale file would enter its hash (and a
    fresh clone, which never has it, would see pairs as changed)."""
    wanted = {file for _, file in predictions_files(pattern, seeds)}
    pattern_path = Path(pattern)
    # the seed goes into the file name only (a folder per seed would need a recursive glob)
    stale = [
        f
        for f in sorted(pattern_path.parent.glob(pattern_path.name.replace(SEED, "*")))
        if f not in wanted
    ]
    for file in stale:
        file.unlink()
    return stale


def write_pairs(pairs: Pairs, out_dir: Path) -> None:
    """Write pairs.npz and confusion.csv into an (empty) directory."""
    save_npz(
        out_dir / PAIRS_FILE,
        {
            "true": pairs.true,
            "guess": pairs.guess,
            "rank": pairs.rank,
            "prob": pairs.prob,
            "split": pairs.split,
            "classes": np.array(pairs.classes, dtype=str),
            "splits": np.array(pairs.splits, dtype=str),
            "groups": np.array(json.dumps(pairs.groups)),
            "classifier": pairs.classifier,
            "classifiers": np.array(pairs.classifiers, dtype=str),
            # Only where there are unseen classes: the default pairs file keeps its bytes.
            **({"unseen": np.array(pairs.unseen, dtype=str)} if pairs.unseen else {}),
            **{
                f"{NOVELTY_PREFIX}{name}": v[:: pairs.top_k]
                for name, v in (pairs.novelty or {}).items()
            },
        },
    )
    k, names = pairs.top_k, pairs.classes
    # The confusion plot: the test pictures' top-1 guesses (all pictures without a test split),
    # as counts per (true, guess) cell, so that the plot data stays small at any N.
    first = slice(None, None, k)
    on_test = pairs.split[first] == (pairs.splits.index("test") if "test" in pairs.splits else -2)
    rows = on_test if on_test.any() else np.ones(len(on_test), bool)
    counts = count_matrix(pairs.true[first][rows], pairs.guess[first][rows], len(names))
    cells = np.flatnonzero(counts)
    if len(names) > CONFUSION_ALL_CELLS_MAX_CLASSES:  # the most frequent cells only
        cells = cells[np.argsort(-counts.ravel()[cells], kind="stable")[:CONFUSION_MAX_CELLS]]
        cells.sort()
    with open(out_dir / CONFUSION_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["actual", "predicted", "count"])
        for cell in cells.tolist():
            a, p = divmod(cell, len(names))
            writer.writerow((names[a], names[p], int(counts[a, p])))


def load_pairs(pairs_dir: str | Path) -> Pairs:
    """Read <pairs_dir>/pairs.npz as written by this stage."""
    path = Path(pairs_dir) / PAIRS_FILE
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the pairs stage first (dvc repro pairs)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PipelineError(
            f"{path}: unreadable ({exc}); rerun the pairs stage (dvc repro -f pairs)"
        ) from None
    needed = (
        "true",
        "guess",
        "rank",
        "prob",
        "split",
        "classes",
        "splits",
        "groups",
        "classifier",
        "classifiers",
    )
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise PipelineError(
            f"{path}: missing {', '.join(missing)}; rerun the pairs stage (dvc repro -f pairs)"
        )
    rank = arrays["rank"]
    return Pairs(
        true=arrays["true"],
        guess=arrays["guess"],
        rank=rank,
        prob=arrays["prob"],
        split=arrays["split"],
        classes=tuple(arrays["classes"].tolist()),
        splits=tuple(arrays["splits"].tolist()),
        groups=json.loads(str(arrays["groups"].item())),
        top_k=int(rank.max()) if rank.size else 0,
        classifier=arrays["classifier"],
        classifiers=tuple(arrays["classifiers"].tolist()),
        unseen=tuple(arrays["unseen"].tolist()) if "unseen" in arrays else (),
        novelty={
            key[len(NOVELTY_PREFIX) :]: np.repeat(v, int(rank.max()))
            for key, v in arrays.items()
            if key.startswith(NOVELTY_PREFIX)
        }
        or None,
    )
