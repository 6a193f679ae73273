"""Benchmark: embed's two engines side by side on one pairs file (gensim vs the JAX skip-gram).

    .venv/bin/python -m benchmarks.engines                    # data/pairs, params.yaml's embed
    .venv/bin/python -m benchmarks.engines --pairs some/dir --seeds 0 1 2
    .venv/bin/python -m benchmarks.engines --synthetic           # CIFAR-like pairs

Reads <pairs>/pairs.npz (the pairs stage's output) and takes one classifier's pairs from it
(--classifier, by default the first: the engines train on one classifier's pairs, as the
embed stage does for each). If it does not exist (or --synthetic), generates CIFAR-like
pairs instead: benchmarks/synthetic.py's predictions (10 classes, the two CIFAR-10 groups
confused within themselves) turned into top-3 pairs by the pairs stage's build_pairs
(confusion_embeddings/pairs.py).

The embed params are params.yaml's `embed` section (defaults where it has none; seeds
0..9 by default), once with engine gensim and once with engine jax. For each engine it
prints and records:
    wall_s                 fit_runs() for all seeds (jax: compilation included)
    spearman_vs_confusion  spearman_upper (evaluation/ranking.py) of the seed-mean cosine
                           table against the confusion similarity (the evaluate stage's
                           figure)
    mean_offdiag_cosine    mean off-diagonal cosine of the seed-mean table
    mean_seed_std          mean over class pairs of the cosine's std over seeds
    budget_x2_max_change   largest change of the seed-mean cosine table when the training
                           budget doubles (gensim: embed.epochs, jax: embed.jax_steps)
and the Spearman correlation between the two engines' seed-mean cosine tables over all
unordered class pairs (scipy.stats.spearmanr on the upper triangle). jax_warm_s: the jax
run again, already compiled.

Writes benchmarks/engines.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from scipy.stats import spearmanr

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import fit_restarts, fit_runs
from confusion_embeddings.evaluation.confusion import confusion_similarity
from confusion_embeddings.evaluation.ranking import mean_offdiag, seed_mean_std, spearman_upper
from confusion_embeddings.pairs import PAIRS_FILE, Pairs, build_pairs, load_pairs
from confusion_embeddings.predictions import load_predictions

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("gensim", "jax")
BUDGET_KEY = {"gensim": "epochs", "jax": "jax_steps"}


def seed_runs(pairs, config: EmbedConfig):
    """One vector set per seed [S, C, dim]: gensim's runs, or each of the jax engine's
    restarts (its table keeps only the lowest-loss one)."""
    if config.engine == "jax":
        return fit_restarts(pairs, config).w_in
    return fit_runs(pairs, config)


def synthetic_pairs(n_per_class: int, strength: float, seed: int) -> Pairs:
    from benchmarks.synthetic import (
        CIFAR10,
        CIFAR10_GROUPS,
        make_synthetic_predictions,
        write_predictions,
    )

    with tempfile.TemporaryDirectory(prefix="engines-bench-") as tmp:
        path = write_predictions(
            Path(tmp) / "pred.npz",
            make_synthetic_predictions(
                n_per_class, CIFAR10, CIFAR10_GROUPS, confusion_strength=strength, seed=seed
            ),
        )
        return build_pairs(load_predictions(path), top_k=3, block_size=PairsConfig().block_size)


def embed_params(params_file: Path, seeds: list[int] | None) -> EmbedConfig:
    raw = {}
    if params_file.exists():
        raw = (yaml.safe_load(params_file.read_text()) or {}).get("embed") or {}
    if seeds is not None:
        raw = {**raw, "seeds": seeds}
    return EmbedConfig.from_params(raw)


def upper(a: np.ndarray) -> np.ndarray:
    return a[np.triu_indices_from(a, k=1)]


def nearest(mean: np.ndarray, classes: tuple[str, ...]) -> dict[str, str]:
    m = mean.copy()
    np.fill_diagonal(m, -np.inf)
    return {classes[i]: classes[int(j)] for i, j in enumerate(m.argmax(axis=1))}


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def run(pairs: Pairs, base: EmbedConfig) -> dict:
    conf = confusion_similarity(pairs)
    results: dict[str, dict] = {}
    means: dict[str, np.ndarray] = {}
    for engine in ENGINES:
        params = base.replace(engine=engine)
        t0 = time.perf_counter()
        vectors = seed_runs(pairs, params)
        wall = time.perf_counter() - t0
        mean, std = seed_mean_std(cosine_matrices(vectors))
        means[engine] = mean
        results[engine] = {
            "wall_s": round(wall, 3),
            "spearman_vs_confusion": _r(spearman_upper(mean, conf)),
            "mean_offdiag_cosine": _r(mean_offdiag(mean)),
            "mean_seed_std": _r(upper(std).mean()),
            "nearest": nearest(mean, pairs.classes),
        }
        if engine == "jax":
            t0 = time.perf_counter()
            again = seed_runs(pairs, params)
            results[engine]["warm_wall_s"] = round(time.perf_counter() - t0, 3)
            results[engine]["rerun_identical"] = bool(np.array_equal(again, vectors))
        # Budget dependence: twice the training (gensim: epochs, jax: steps), same seeds.
        budget_key = BUDGET_KEY[engine]
        doubled = seed_runs(pairs, params.replace(**{budget_key: 2 * getattr(params, budget_key)}))
        results[engine]["budget_x2_max_change"] = _r(
            np.abs(seed_mean_std(cosine_matrices(doubled))[0] - mean).max()
        )
    rho = spearmanr(upper(means["gensim"]), upper(means["jax"])).statistic
    return {"engines": results, "spearman_gensim_vs_jax": _r(rho)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pairs", default=str(ROOT / "data" / "pairs"), help="pairs directory (pairs stage output)"
    )
    ap.add_argument(
        "--params", default=str(ROOT / "params.yaml"), help="its `embed` section is used, if any"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="override embed.seeds")
    ap.add_argument(
        "--classifier", default=None, help="whose pairs (e.g. seed_1); default: the first"
    )
    ap.add_argument(
        "--synthetic", action="store_true", help="synthetic CIFAR-like pairs even if --pairs exists"
    )
    ap.add_argument("--n-per-class", type=int, default=6000, help="synthetic pictures per class")
    ap.add_argument(
        "--confusion-strength", type=float, default=1.5, help="synthetic within-group confusion"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "engines.json"))
    args = ap.parse_args()

    base = embed_params(Path(args.params), args.seeds)
    pairs_path = Path(args.pairs) / PAIRS_FILE
    if args.synthetic or not pairs_path.exists():
        source = (
            f"synthetic CIFAR-like ({args.n_per_class}/class, confusion_strength "
            f"{args.confusion_strength}, top-3)"
        )
        pairs = synthetic_pairs(args.n_per_class, args.confusion_strength, seed=0)
    else:
        pairs = load_pairs(args.pairs)
        name = args.classifier or pairs.classifiers[0]
        if name not in pairs.classifiers:
            raise SystemExit(f"{pairs_path}: no classifier {name!r} (it has {pairs.classifiers})")
        pairs = pairs.of(pairs.classifiers.index(name))
        source = f"{pairs_path}, classifier {name}"

    print(
        f"pairs: {source}: {pairs.n_pictures} pictures, {pairs.n_classes} classes, "
        f"{pairs.true.size} pairs"
    )
    print(
        f"seeds: {list(base['seeds'])}, dim {base['dim']}; jax: steps {base['jax_steps']}, "
        f"lr {base['jax_lr']}, "
        f"l2 {base['jax_l2']}, {base['jax_objective']}; device {jax.devices()[0].platform}"
    )
    out = run(pairs, base)

    rows = [
        ("wall_s", "wall time (s)"),
        ("spearman_vs_confusion", "Spearman vs confusion"),
        ("mean_offdiag_cosine", "mean off-diag cosine"),
        ("mean_seed_std", "mean seed std"),
        ("budget_x2_max_change", "max change, budget x2"),
    ]
    print(f"\n{'':24s}{'gensim':>10s}{'jax':>10s}")
    for key, label in rows:
        cells = [out["engines"][e][key] for e in ENGINES]
        print(
            f"{label:24s}"
            + "".join(f"{'-' if c is None else format(c, '.4g'):>10s}" for c in cells)
        )
    print(f"{'jax again (compiled)':24s}{'':10s}{out['engines']['jax']['warm_wall_s']:>10.4g}")
    print(f"\nSpearman, gensim vs jax seed-mean cosine tables: {out['spearman_gensim_vs_jax']}")
    print("nearest neighbour (gensim / jax):")
    for c in pairs.classes:
        g, j = out["engines"]["gensim"]["nearest"][c], out["engines"]["jax"]["nearest"][c]
        print(f"  {c:12s} {g:12s} {j:12s}{'' if g == j else '  *'}")

    record = {
        "pairs": source,
        "pictures": pairs.n_pictures,
        "classes": pairs.n_classes,
        "n_pairs": int(pairs.true.size),
        "params": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in base.items() if k != "engine"
        },
        "machine": {"platform": platform.platform(), "jax_device": str(jax.devices()[0])},
        **out,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
