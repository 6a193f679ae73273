"""Benchmark: which embed engine holds from a few hundred pictures to ImageNet's size.

    python -m method_studies.engine_study                   # every setting below
    python -m method_studies.engine_study --quick           # without the 1,000-class setting
    python -m method_studies.engine_study --predictions cifar=data/predictions/seed_0.npz

Both engines (embed.engine gensim and jax), every other embed param at its default, on:
  - graded synthetic predictions: C classes at random positions in a 4-d latent space; a
    picture's scores fall with its true class's squared distance to each class (plus
    N(0, 1) noise), so class pairs are confused by degrees, not just within/across groups.
    10 classes x 200 to 60,000 pictures, 100 classes x 50,000, 1,000 classes x 1,281,167
    (ImageNet's training set);
  - any predictions files given with --predictions NAME=PATH (e.g. a CIFAR-10 classifier's).
Each setting's pairs are the top-3 guesses. Per engine it records evaluate's figures on the
seed-mean table: spearman_vs_confusion (the pairs evaluate ranks: C x top_n most confused),
mean_offdiag_cosine, collapsed (evaluate's default criteria), seed_reliability (split-half:
even vs odd seeds, evaluation/scores.py), and the wall time of fit_runs.

Writes method_studies/engine_study.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import fit_restarts, fit_runs
from confusion_embeddings.evaluation.caveats import collapse_reasons
from confusion_embeddings.evaluation.confusion import confusion_similarity
from confusion_embeddings.evaluation.ranking import mean_offdiag, seed_reliability, spearman_upper
from confusion_embeddings.pairs import Pairs, build_pairs
from confusion_embeddings.predictions import load_predictions

ROOT = Path(__file__).resolve().parents[1]
TOP_K = 3
BLOCK = PairsConfig().block_size
SETTINGS = [(10, 200), (10, 1000), (10, 5000), (10, 60000), (100, 50000), (1000, 1281167)]


def seed_runs(pairs, config: EmbedConfig):
    """One vector set per seed [S, C, dim]: gensim's runs, or each of the jax engine's
    restarts (its table keeps only the lowest-loss one)."""
    if config.engine == "jax":
        return fit_restarts(pairs, config).w_in
    return fit_runs(pairs, config)


def graded_pairs(n_classes: int, n: int, seed: int = 0) -> Pairs:
    """Top-3 pairs of n synthetic pictures over n_classes graded classes (module docstring)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_classes, 4))
    dist = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    # Confusions by degrees: the typical nearest class sits ~2 noise units below the truth.
    beta = 2.0 / np.median(np.sort(dist, axis=1)[:, 1])
    labels = rng.integers(0, n_classes, size=n)
    guess = np.empty((n, TOP_K), np.int32)
    for start in range(0, n, BLOCK):
        lab = labels[start : start + BLOCK]
        scores = -beta * dist[lab] + rng.standard_normal((lab.size, n_classes))
        top = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        guess[start : start + lab.size] = np.take_along_axis(top, order, axis=1)
    p = n * TOP_K
    return Pairs(
        true=np.repeat(labels.astype(np.int32), TOP_K),
        guess=guess.reshape(-1),
        rank=np.tile(np.arange(1, TOP_K + 1, dtype=np.int8), n),
        prob=np.full(p, np.nan, np.float32),
        split=np.full(p, -1, np.int8),
        classes=tuple(f"c{i}" for i in range(n_classes)),
        splits=(),
        groups=None,
        top_k=TOP_K,
        classifier=np.zeros(p, np.int16),
    )


def measure(pairs: Pairs) -> dict:
    ev = EvaluateConfig()
    conf = confusion_similarity(pairs)
    max_pairs = pairs.n_classes * ev.top_n
    out = {}
    for engine in ("gensim", "jax"):
        params = EmbedConfig(engine=engine)
        t0 = time.perf_counter()
        sims = cosine_matrices(seed_runs(pairs, params))
        wall = time.perf_counter() - t0
        mean = sims.mean(axis=0)
        rho = spearman_upper(mean, conf, max_pairs)
        offdiag = mean_offdiag(mean)
        out[engine] = {
            "spearman_vs_confusion": None if rho is None else round(rho, 4),
            "mean_offdiag_cosine": round(offdiag, 4),
            "collapsed": bool(collapse_reasons(rho, offdiag, ev)),
            "seed_reliability": round(seed_reliability(sims, conf, max_pairs) or 0.0, 4),
            "wall_s": round(wall, 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 1,000-class setting")
    ap.add_argument("--predictions", nargs="*", default=[], help="NAME=PATH predictions files")
    ap.add_argument("--out", default=str(ROOT / "method_studies" / "engine_study.json"))
    args = ap.parse_args()
    results = {}
    for n_classes, n in SETTINGS:
        if args.quick and n_classes >= 1000:
            continue
        name = f"graded {n_classes} classes x {n:,} pictures"
        results[name] = {"pictures": n, "classes": n_classes, **measure(graded_pairs(n_classes, n))}
        print(name, json.dumps(results[name]), flush=True)
    for spec in args.predictions:
        name, _, path = spec.partition("=")
        pairs = build_pairs(load_predictions(path), TOP_K, BLOCK, name)
        results[name] = {"pictures": pairs.n_pictures, "classes": pairs.n_classes, **measure(pairs)}
        print(name, json.dumps(results[name]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
