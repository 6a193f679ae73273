"""Stage pairs: classifiers' top-k guesses -> (true class, k-th guess) pairs.

Reads:  --predictions, one predictions file (contract: confusion_embeddings/predictions.py),
        or, with --seeds, a pattern with {seed} naming the file of each of those classifiers
        (the CNNs of params `classifiers.seeds`); params.yaml's `pairs:` section.
Writes: --out (pairs.npz + confusion.csv, see confusion_embeddings/pairs.py), replaced
        atomically; --metrics (classifiers, pictures, pairs, top-1 and top-k accuracy per
        split, over every classifier). With --seeds, deletes the pattern's files of seeds no
        longer in `classifiers.seeds` (pairs.delete_stale_predictions says why).
"""

from __future__ import annotations

from confusion_embeddings import pairs as p
from confusion_embeddings.config.pairs import ClassifiersConfig, PairsConfig
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir, write_json


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--predictions": "predictions file, or with --seeds their pattern",
            "--out": "output directory",
            "--metrics": "metrics JSON",
        },
        seeds={"type": int, "nargs": "+", "help": "classifiers' seeds (files of the pattern)"},
    )
    config = PairsConfig.load(args.params)
    if args.seeds is not None:  # the project's classifiers (a study reads one file instead)
        ClassifiersConfig.load(args.params)
        for file in p.delete_stale_predictions(str(args.predictions), args.seeds):
            print(f"pairs: removed {file} (its seed is no longer in classifiers.seeds)")
    files = p.predictions_files(str(args.predictions), args.seeds)
    pairs = p.make_pairs(p.read_classifiers(files, config), config)
    metrics = p.pairs_metrics(pairs)
    with atomic_dir(args.out) as tmp:
        p.write_pairs(pairs, tmp)
    write_json(args.metrics, metrics)
    print(p.summary_line(metrics))


if __name__ == "__main__":
    run_main(main)
