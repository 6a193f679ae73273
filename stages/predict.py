"""Stage predict: run a trained CNN over every picture of the chosen splits.

Reads:  --prepared, --model (with the RunConfig train saved beside it: convolution,
        precision, test-time augmentation, CPU devices), params.yaml's `predict:` section.
Writes: --out, a predictions file in the contract of confusion_embeddings/predictions.py
        (`labels`, `classes`, `probs` or `logits` as params predict.scores says,
        `split`/`splits`, `groups`, `unseen` where train left classes out), and --timings.
The work: confusion_embeddings/cnn/run.py (predict_classifier).
"""

from __future__ import annotations

from confusion_embeddings.cnn.run import predict_classifier
from confusion_embeddings.core.cli import run_main, stage_args


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--prepared": "prepared dataset folder",
            "--model": "trained model folder",
            "--out": "predictions file to write (.npz)",
            "--timings": "timings JSON to write",
        },
    )
    predict_classifier(args.model, args.prepared, args.out, args.timings, args.params)


if __name__ == "__main__":
    run_main(main)
