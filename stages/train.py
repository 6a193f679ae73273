"""Stage train: fit the CNN of one seed on the prepared training split.

Reads:  --prepared (layout: confusion_embeddings/data/prepared.py), params.yaml's `train:`
        and `hosts:` sections, and dvc.yaml (this stage's dependencies, which the resume
        checkpoint's fingerprint covers).
Writes: --model (confusion_embeddings/cnn/checkpoint.py), --metrics (headline figures),
        --timings (wall times, speed), --live (per-epoch curves, through dvclive).
Keeps:  a checkpoint under --checkpoints after every epoch while it runs, so that a killed
        run continues from its last completed epoch (confusion_embeddings/cnn/resume.py).
The work: confusion_embeddings/cnn/run.py (train_classifier).
"""

from __future__ import annotations

from confusion_embeddings.cnn.run import TrainOutputs, train_classifier
from confusion_embeddings.core.cli import run_main, stage_args


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--prepared": "prepared dataset folder",
            "--model": "model folder to write",
            "--metrics": "metrics JSON to write",
            "--timings": "timings JSON to write",
            "--live": "dvclive folder for per-epoch curves",
            "--checkpoints": "folder of the resume checkpoint",
        },
        seed={"type": int, "required": True, "help": "the classifier's seed"},
    )
    out = TrainOutputs(args.model, args.metrics, args.timings, args.live, args.checkpoints)
    train_classifier(args.seed, args.prepared, out, args.params)


if __name__ == "__main__":
    run_main(main)
