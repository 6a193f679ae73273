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
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.pairs import (
    SCHEMA,
    make_pairs,
    pairs_metrics,
    predictions_files,
    remove_stale,
    write_pairs,
)
from confusion_embeddings.predictions import load_predictions


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
    if args.seeds is not None and args.predictions.is_dir():
        remove_stale(args.predictions, args.seeds)
    predictions = []
    for name, path in predictions_files(args.predictions, args.seeds):
        if not path.exists() and params["predictions"] == str(args.predictions):
            raise PipelineError(
                f"params.yaml: 'pairs.predictions' = {params['predictions']!r} names no file; "
                "point it at your predictions file (.npz, kept under inputs/)"
            )
        # build_pairs checks each block of scores as it reads it: no separate pass here.
        predictions.append((name, load_predictions(path, check_values=False)))
    pairs = make_pairs(predictions, params)
    metrics = pairs_metrics(pairs)
    with atomic_dir(args.out) as tmp:
        write_pairs(pairs, tmp)
    write_json(args.metrics, metrics)
    k = metrics["top_k"]
    print(
        f"pairs: {metrics['classifiers']} classifier(s), {metrics['pictures']} pictures x "
        f"top-{k} -> {metrics['pairs']} pairs; top-1 accuracy "
        f"{metrics['top1_accuracy']['all']:.4f}, top-{k} {metrics['topk_accuracy']['all']:.4f}"
    )


if __name__ == "__main__":
    run_main(main)
