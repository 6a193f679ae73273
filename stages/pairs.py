"""Stage pairs: a classifier's top-k guesses -> (true class, k-th guess) pairs.

Reads:  --predictions (contract: confusion_embeddings/predictions.py; dvc.yaml passes
        params `pairs.predictions`), params.yaml's `pairs:` section.
Writes: --out (pairs.npz + confusion.csv, see confusion_embeddings/pairs.py), replaced
        atomically; --metrics (pictures, pairs, top-1 and top-k accuracy per split).
"""

from __future__ import annotations

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.pairs import SCHEMA, build_pairs, pairs_metrics, write_pairs
from confusion_embeddings.predictions import load_predictions


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--predictions": "predictions file (.npz)",
            "--out": "output directory",
            "--metrics": "metrics JSON",
        },
    )

    params = load_params("pairs", SCHEMA, args.params)
    # build_pairs checks each block of scores as it reads it: no separate pass here.
    pred = load_predictions(args.predictions, check_values=False)
    pairs = build_pairs(pred, params["top_k"], params["block_size"])
    metrics = pairs_metrics(pairs)
    with atomic_dir(args.out) as tmp:
        write_pairs(pairs, tmp)
    write_json(args.metrics, metrics)
    k = metrics["top_k"]
    print(
        f"pairs: {metrics['pictures']} pictures x top-{k} -> {metrics['pairs']} pairs; "
        f"top-1 accuracy {metrics['top1_accuracy']['all']:.4f}, "
        f"top-{k} {metrics['topk_accuracy']['all']:.4f}"
    )


if __name__ == "__main__":
    run_main(main)
