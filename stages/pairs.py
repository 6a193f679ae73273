"""Stage pairs: classifiers' top-k guesses -> (true class, k-th guess) pairs.

Reads:  --predictions, one predictions file (contract: confusion_embeddings/predictions.py),
        or, with --seeds, the folder of the files `seed_<s>.npz` of those classifiers (the
        CNNs of params `classifiers.seeds`); params.yaml's `pairs:` section.
Writes: --out (pairs.npz + confusion.csv, see confusion_embeddings/pairs.py), replaced
        atomically; --metrics (classifiers, pictures, pairs, top-1 and top-k accuracy per
        split, over every classifier).
"""

from __future__ import annotations

from pathlib import Path

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.pairs import SCHEMA, make_pairs, pairs_metrics, write_pairs
from confusion_embeddings.predictions import load_predictions


def predictions_files(path: Path, seeds: list[int] | None) -> list[tuple[str, Path]]:
    """(classifier name, file) for every classifier to read."""
    if seeds is None:
        return [(path.stem, path)]
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{path}: --seeds names classifiers in a folder; this is a file")
    return [(f"seed_{s}", path / f"seed_{s}.npz") for s in seeds]


def remove_stale(folder: Path, seeds: list[int]) -> None:
    """Delete the predictions of classifiers no longer in `seeds`: DVC leaves a removed
    stage's output in place, and this folder is the pairs stage's dependency, so a stale
    file would enter its hash (and a fresh clone, which never has it, would see pairs as
    changed)."""
    wanted = {f"seed_{s}.npz" for s in seeds}
    for stale in sorted(folder.glob("seed_*.npz")):
        if stale.name not in wanted:
            stale.unlink()
            print(f"pairs: removed {stale} (its seed is no longer in classifiers.seeds)")


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
