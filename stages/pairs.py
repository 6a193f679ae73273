"""Stage pairs: classifiers' top-k guesses -> (true class, k-th guess) pairs.

Reads:  --predictions, one predictions file (contract: confusion_embeddings/predictions.py),
        or, with --seeds, the folder of the files `seed_<s>.npz` of those classifiers (the
        CNNs of params `classifiers.seeds`); params.yaml's `pairs:` section.
Writes: --out (pairs.npz + confusion.csv, see confusion_embeddings/pairs.py), replaced
        atomically; --metrics (classifiers, pictures, pairs, top-1 and top-k accuracy per
        split, over every classifier).
"""

from __future__ import annotations

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.pairs import (
    CLASSIFIERS,
    SCHEMA,
    make_pairs,
    pairs_metrics,
    read_classifiers,
    summary_line,
    write_pairs,
)


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--predictions": "predictions file, or with --seeds their folder",
            "--out": "output directory",
            "--metrics": "metrics JSON",
        },
        seeds={"type": int, "nargs": "+", "help": "classifiers' seeds (files seed_<s>.npz)"},
    )
    params = load_params("pairs", SCHEMA, args.params)
    if args.seeds is not None:  # the project's classifiers (a study reads one file instead)
        load_params("classifiers", CLASSIFIERS, args.params)
    pairs = make_pairs(read_classifiers(args.predictions, args.seeds, params), params)
    metrics = pairs_metrics(pairs)
    with atomic_dir(args.out) as tmp:
        write_pairs(pairs, tmp)
    write_json(args.metrics, metrics)
    print(summary_line(metrics))


if __name__ == "__main__":
    run_main(main)
