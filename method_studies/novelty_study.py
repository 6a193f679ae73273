"""New or known: every novelty score's AUROC per left-out class, from the leave-one-class-out
experiments' own predictions files.

    python -m method_studies.novelty_study                 # experiments named loco-<class>
    python -m method_studies.novelty_study --prefix unseen-

Reads each experiment's predict@0 output (its dvc.lock names the file, the local DVC cache
holds it): logits, since predict.scores defaults to them. For an experiment whose predict
wrote probabilities it reads the same classifier's logits where `python -m
method_studies.novelty_logits` recomputed them, so that max_logit and energy are measured
too (`scores_from` in the JSON says what each row read). It runs the method on them as the
pipeline does (pairs, embed, two redraws: the AUROCs do not depend on the redraws), writes
method_studies/novelty_study.json (or --out) and prints a markdown table: a row per
left-out class, a column per score, then the mean, the median and how many classes each
score beats max_prob on.

The JSON's `best` is the score evaluate.novelty_score defaults to, `best_from_probabilities`
the one the report falls back on where the predictions cannot give it (evaluation/unseen.py's
FALLBACK; tests/test_novelty_study.py checks both against the code): the score that meets
more of the targets (beat max_prob on TARGET_WINS of the classes; a median AUROC of
TARGET_MEDIAN), then the highest median, then the most wins, then the highest mean, among
the scores measured on every class (`best_from_probabilities`: among those any
probabilities file gives, FROM_ANY_PROBABILITIES).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import yaml

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.evaluate import NOVELTY_SCORES, EvaluateConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.embedding.resampling import resample
from confusion_embeddings.method import evaluate
from confusion_embeddings.pairs import make_pairs
from confusion_embeddings.predictions import load_predictions

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".dvc" / "cache" / "files" / "md5"
BASELINE = "max_prob"
TRAIN_METRICS = "metrics/train/seed_0.json"
# The one classifier's outputs of a leave-one-class-out experiment, as its dvc.lock names them.
PREPARED_PATH = "data/prepared"
MODEL_PATH = "models/cnn/seed_0"
PREDICTIONS_PATH = "data/predictions/seed_0.npz"
# method_studies/novelty_logits.py writes each experiment's logits here: the same classifier's
# output before the softmax, which the logit scores (max_logit, energy) need.
LOGITS = ROOT / ".cache" / "novelty_logits"
# The scores every predictions file with probabilities gives: from its top-k guesses and the
# class vectors alone (no logits, no train split to fit on).
FROM_ANY_PROBABILITIES = ("max_prob", "margin", "entropy", "spread")
# What a new-or-known score should reach: beat max_prob on 9 of 10 left-out classes, and a
# median AUROC of 0.85 (the open-set baseline's neighbourhood on CIFAR-10).
TARGET_WINS, TARGET_MEDIAN = 0.9, 0.85


def logits_file(experiment: str) -> Path:
    return LOGITS / f"{experiment}.npz"


def experiments(prefix: str) -> dict[str, str]:
    """{left-out class: experiment ref} of the experiments named <prefix><class>."""
    listed = subprocess.run(
        ["dvc", "exp", "list", "--all", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {name[len(prefix) :]: name for name in listed if name.startswith(prefix)}


def experiment_lock(experiment: str) -> dict:
    """The experiment's dvc.lock, parsed."""
    return yaml.safe_load(experiment_file(experiment, "dvc.lock"))


def experiment_file(experiment: str, path: str) -> str:
    """A file of the experiment's commit (dvc.lock, a metrics file), as text."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for ref in (r for r in refs if r.rsplit("/", 1)[-1] == experiment):
        lock = subprocess.run(
            ["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True
        )
        if lock.returncode == 0:
            return lock.stdout
    raise SystemExit(f"{experiment}: no experiment with a {path} of that name")


def predictions_file(experiment: str) -> Path:
    """The experiment's predict@0 output in the local DVC cache (its dvc.lock says which)."""
    return cached(experiment_lock(experiment), "predict@0", PREDICTIONS_PATH)


def cached(lock: dict, stage: str, path: str) -> Path:
    """Where the local DVC cache keeps a stage's output `path` (a file, or a folder's `.dir`
    listing) as that dvc.lock records it."""
    for out in lock["stages"][stage]["outs"]:
        if out["path"] == path:
            return CACHE / out["md5"][:2] / out["md5"][2:]
    raise SystemExit(f"dvc.lock: stage {stage} has no output {path}")


def scores_file(experiment: str) -> Path:
    """The experiment's predictions with logits where there are any: its own predict output,
    or else novelty_logits' recomputed file, or else its probabilities."""
    own = predictions_file(experiment)
    if load_predictions(own).kind == "logits" or not logits_file(experiment).exists():
        return own
    return logits_file(experiment)


def aurocs(path: Path) -> dict[str, float]:
    """Every score's AUROC for one left-out class's predictions."""
    pairs = make_pairs([("seed_0", load_predictions(path))], PairsConfig())
    embedding = embed(pairs, EmbedConfig())
    replicates = resample(pairs, embedding, ResampleConfig(bootstrap=2))
    ev = evaluate(pairs, embedding, replicates, EvaluateConfig())
    return {k: round(v, 4) for k, v in ev.unseen.novelty.auroc.items()}


def test_accuracy(experiment: str) -> float:
    """The classifier's test accuracy over the known classes (test-time augmentation on)."""
    return json.loads(experiment_file(experiment, TRAIN_METRICS))["test_accuracy"]


def summary(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each score's mean and median AUROC over the classes it was measured on, how many of
    them it beats max_prob on, and on how many it was measured."""
    out = {}
    for s in NOVELTY_SCORES:
        measured = [r for r in rows.values() if s in r]
        if measured:
            values = [r[s] for r in measured]
            out[s] = {
                "mean": round(float(np.mean(values)), 4),
                "median": round(float(np.median(values)), 4),
                "beats_max_prob": sum(r[s] > r[BASELINE] for r in measured),
                "classes": len(measured),
            }
    return out


def targets_met(v: dict[str, float]) -> int:
    """How many of the two targets a score's summary meets."""
    return (v["beats_max_prob"] >= TARGET_WINS * v["classes"]) + (v["median"] >= TARGET_MEDIAN)


def best(stats: dict[str, dict[str, float]], among: tuple[str, ...] = NOVELTY_SCORES) -> str:
    """The score meeting more targets, then with the highest median, the most wins over
    max_prob, the highest mean, among `among`'s scores measured on every class."""
    most = max(v["classes"] for v in stats.values())
    full = [s for s in among if s in stats and stats[s]["classes"] == most]

    def rank(s: str) -> tuple:
        v = stats[s]
        return targets_met(v), v["median"], v["beats_max_prob"], v["mean"]

    return max(full, key=rank)


def table(rows: dict[str, dict[str, float]], accuracy: dict[str, float]) -> str:
    """Markdown: a row per left-out class (its classifier's test accuracy, then each score's
    AUROC, the row's best in bold), then each score's mean, median and wins over max_prob."""
    stats = summary(rows)
    scores = list(stats)
    lines = [
        "| left out | test accuracy (known) | " + " | ".join(scores) + " |",
        "|---|---|" + "---|" * len(scores),
    ]
    for cls, r in rows.items():
        best = max(r.values())
        cells = [
            "" if s not in r else f"**{r[s]:.3f}**" if r[s] == best else f"{r[s]:.3f}"
            for s in scores
        ]
        lines.append(f"| {cls} | {accuracy[cls]:.3f} | " + " | ".join(cells) + " |")
    for what in ("mean", "median"):
        lines.append(f"| {what} | | " + " | ".join(f"{stats[s][what]:.3f}" for s in scores) + " |")
    beats = [f"{stats[s]['beats_max_prob']}/{stats[s]['classes']}" for s in scores]
    lines.append(f"| beats {BASELINE} | | " + " | ".join(beats) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="loco-", help="experiment names: <prefix><class>")
    ap.add_argument("--out", default=str(ROOT / "method_studies" / "novelty_study.json"))
    args = ap.parse_args()
    found = experiments(args.prefix)
    if not found:
        raise SystemExit(f"no experiment named {args.prefix}<class>; see docs/unseen.md")
    rows, sources, accuracy = {}, {}, {}
    for cls, name in sorted(found.items()):
        path = scores_file(name)
        sources[cls] = load_predictions(path).kind
        if path == logits_file(name):
            sources[cls] += " (recomputed: novelty_logits)"
        rows[cls] = aurocs(path)
        accuracy[cls] = test_accuracy(name)
    stats = summary(rows)
    doc = {
        "experiments": found,
        "scores_from": sources,
        "test_accuracy": accuracy,
        "auroc": rows,
        "summary": stats,
        "best": best(stats),
        "best_from_probabilities": best(stats, FROM_ANY_PROBABILITIES),
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(table(rows, accuracy))
    print(f"best: {doc['best']}; best from any probabilities: {doc['best_from_probabilities']}")


if __name__ == "__main__":
    main()
