"""How far `classifier_agreement` moves between runs of one recipe.

    python -m method_studies.agreement_spread --experiments bf16-675 s345 s678 \
        --out method_studies/agreement_spread.json

`classifier_agreement` (metrics/similarity.json) is the mean Spearman of the three pairs of
tables that three classifiers give: one draw from a distribution, which a threshold at its
third decimal cannot be read against without that distribution's width. This study pools
the classifiers of several runs of one recipe (experiments or git revisions, each with its
own `classifiers.seeds`), reads each classifier's table from the run's
reports/similarity_matrices.npz (`similarity_per_classifier`, the tables evaluate compares;
the file from the DVC cache by its md5 in the run's dvc.lock) and reports:
  - every run's own agreement, recomputed (it must match the run's metric);
  - the Spearman of every pair of pooled classifiers, their mean and standard deviation;
  - the agreement of every triple of pooled classifiers (what a run of three would report):
    mean, standard deviation, range, and the share at or above --threshold. Triples that
    share a classifier are not independent draws, so this describes the spread rather than
    giving a confidence interval; the disjoint runs are the independent draws.

Writes --out (JSON) and prints a summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from confusion_embeddings.evaluation.ranking import table_agreement
from method_studies.recipe_study import ROOT, cached, experiment_refs, outputs

MATRICES = "reports/similarity_matrices.npz"


def run_tables(repo: Path, rev: str) -> tuple[list[str], np.ndarray]:
    """A run's classifier names and their [M, C, C] tables, from the DVC cache."""
    outs = outputs(repo, rev)
    if MATRICES not in outs:
        raise SystemExit(f"{rev}: no {MATRICES} in its dvc.lock")
    path = cached(repo, outs[MATRICES])
    if not path.exists():
        raise SystemExit(f"{rev}: {MATRICES} is not in this repository's DVC cache (dvc pull)")
    with np.load(path) as d:
        return [str(c) for c in d["classifiers"]], d["similarity_per_classifier"]


def spread(tables: np.ndarray, size: int, threshold: float) -> dict:
    """The agreement of every `size`-subset of the pooled tables, summarised."""
    values = np.array(
        [table_agreement(tables[list(s)]) for s in itertools.combinations(range(len(tables)), size)]
    )
    return {
        "subsets": len(values),
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std(ddof=1)), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
        f"share_at_least_{threshold}": round(float((values >= threshold).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--experiments", nargs="+", required=True, help="runs of one recipe")
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--out", type=Path, default=ROOT / "method_studies" / "agreement_spread.json")
    args = ap.parse_args()
    if len(set(args.experiments)) != len(args.experiments):
        raise SystemExit("each run once: a run named twice would pool its classifiers twice")
    refs = experiment_refs(args.repo)
    names: list[str] = []
    pooled: list[np.ndarray] = []
    runs = {}
    for rev in args.experiments:
        classifiers, tables = run_tables(args.repo, refs.get(rev, rev))
        runs[rev] = {"classifiers": classifiers, "agreement": round(table_agreement(tables), 4)}
        names += [f"{rev}/{c}" for c in classifiers]
        pooled.append(tables)
    if len({t.shape[1:] for t in pooled}) != 1:
        raise SystemExit("the runs must share their classes")
    tables = np.concatenate(pooled)
    if len(tables) < 4:
        raise SystemExit(f"{len(tables)} classifiers: pool at least 4 (two runs) for a spread")
    pairs = {
        f"{names[a]} ~ {names[b]}": round(table_agreement(tables[[a, b]]), 4)
        for a, b in itertools.combinations(range(len(tables)), 2)
    }
    rho = np.array(list(pairs.values()))
    result = {
        "runs": runs,
        "classifiers": names,
        "pairwise_spearman": pairs,
        "pairwise_mean": round(float(rho.mean()), 4),
        "pairwise_std": round(float(rho.std(ddof=1)), 4),
        "triples": spread(tables, 3, args.threshold),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for rev, r in runs.items():
        print(f"{rev}: agreement {r['agreement']:.4f} ({', '.join(r['classifiers'])})")
    print(
        f"{len(names)} classifiers, {len(rho)} pairs: Spearman {result['pairwise_mean']:.4f}"
        f" ± {result['pairwise_std']:.4f} (sd); range {rho.min():.4f}-{rho.max():.4f}"
    )
    t = result["triples"]
    print(
        f"{t['subsets']} triples: agreement {t['mean']:.4f} ± {t['std']:.4f} (sd), "
        f"{t['min']:.4f}-{t['max']:.4f}; at least {args.threshold}: "
        f"{t[f'share_at_least_{args.threshold}']:.1%}"
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
