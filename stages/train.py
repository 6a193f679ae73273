"""Stage train: fit the CNN on the prepared training split.

Reads:  --prepared (layout: confusion_embeddings/data/prepared.py), params.yaml's `train:`
        section, and dvc.yaml (this stage's dependencies, which the resume checkpoint's
        fingerprint covers).
Writes: --model (confusion_embeddings/cnn/checkpoint.py), --metrics (headline figures),
        --timings (wall times, speed), --live (per-epoch curves, through dvclive).
Keeps:  a checkpoint under --checkpoints after every epoch while it runs, so that a killed
        run continues from its last completed epoch (confusion_embeddings/cnn/resume.py).
In a multi-host job (confusion_embeddings/devices.py) every host trains on its slice of each
batch and only process 0 writes.
"""

from __future__ import annotations

import json
import time

import jax

from confusion_embeddings import devices
from confusion_embeddings.cnn import process
from confusion_embeddings.cnn.checkpoint import save_model
from confusion_embeddings.cnn.network import count_flops
from confusion_embeddings.cnn.resume import Resume, fingerprint
from confusion_embeddings.cnn.training import (
    SCHEMA,
    SEED_RANGE,
    check_batch_sizes,
    check_geometry,
    holdout,
    train_and_evaluate,
    training_rows,
)
from confusion_embeddings.core.cli import run_main, stage_args, stage_deps
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import write_json
from confusion_embeddings.core.params import load_params, read_params_file
from confusion_embeddings.data.prepared import load_prepared


def open_live(live_dir: str):
    """dvclive's logger for the per-epoch curves, with a clear error where it cannot start."""
    from dvclive import Live  # slow to import, and only needed here
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=live_dir, save_dvc_exp=False, dvcyaml=None)
    except SCMError as e:  # dvclive asks git for the current commit, even with no commit
        raise PipelineError(
            f"dvclive could not read the git repository ({e}); commit once "
            "(`git add -A && git commit -m init`) and rerun `dvc repro`"
        ) from e


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
    t_stage = time.perf_counter()
    p = load_params("train", SCHEMA, args.params)
    seed = args.seed
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise PipelineError(
            f"params.yaml: 'classifiers.seeds' holds {seed}; seeds must be in "
            f"[{SEED_RANGE[0]}, {SEED_RANGE[1]}]"
        )
    left_out = holdout(p, seed)
    choice = process.start(
        p["conv_impl"],
        p["cpu_devices"],
        [p["batch_size"], p["eval_batch_size"]],
        precision=p["precision"],
        peer_timeout=load_params("hosts", devices.HOSTS, args.params)["peer_timeout"],
    )

    data = load_prepared(args.prepared, ["train", "test"])
    n_train = len(training_rows(data.splits["train"].labels, left_out))
    check_batch_sizes(p, n_train)  # before any output is touched
    check_geometry(data.image_hw, p)
    deps = stage_deps("train", item=seed, params=read_params_file(args.params))
    resume = Resume(args.checkpoints, fingerprint(p, seed, choice.impl, deps, choice.precision))
    primary = devices.is_primary()
    live = open_live(str(args.live)) if primary else None

    def log_epoch(rec: dict) -> None:
        if live is None:
            return
        for k, v in rec.items():
            if k != "epoch":
                live.log_metric(k, v)
        live.next_step()

    trained = train_and_evaluate(
        data, p, seed, choice.impl, resume, on_epoch=log_epoch, precision=choice.precision
    )
    print(f"test accuracy with test-time augmentation: {trained.test_accuracy:.4f}", flush=True)
    if live is None:
        return
    live.end()
    inference = {
        "tta_flip": p["tta_flip"],
        "tta_translate": p["tta_translate"],
        "cpu_devices": p["cpu_devices"],
        "holdout": left_out,  # the training fold it never saw (cross-fitting), or None
    }
    save_model(
        args.model,
        trained.cfg,
        inference,
        trained.norm,
        trained.state["params"],
        trained.state["rest"],
    )
    last = trained.history[-1]
    metrics = {
        "test_accuracy": round(trained.test_accuracy, 6),
        "test_accuracy_no_tta": last["test/accuracy"],
        "train_accuracy": last["train/accuracy"],
        "train_loss": last["train/loss"],
        "conv_impl_used": choice.impl,
        "precision_used": choice.precision,
        "backend": jax.default_backend(),
        "cpu": devices.cpu_isa(),
    }
    images = (n_train // p["batch_size"]) * p["batch_size"] * p["epochs"]
    timings = {
        "train_seconds": round(trained.train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t_stage, 1),
        "images_per_second": round(images / trained.train_seconds, 1),
        "gflops_per_image_train": round(3 * count_flops(trained.cfg, data.image_hw) / 1e9, 4),
        "device_count": jax.device_count(),
    }
    write_json(args.metrics, metrics)
    args.timings.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.timings, timings)
    resume.remove()
    print(json.dumps({**metrics, **timings}, indent=2))


if __name__ == "__main__":
    run_main(main)
