"""Stage predict: run the trained CNN over every picture of the chosen splits.

Reads:  --prepared, --model (with the settings train saved beside it: convolution,
        precision, test-time augmentation, CPU devices), params.yaml's `predict:` section.
Writes: --out, a predictions file in the contract of confusion_embeddings/predictions.py
        (`labels`, `classes`, `probs`, `split`/`splits`, `groups`), and --timings.
"""

from __future__ import annotations

import json
import time

from confusion_embeddings import devices
from confusion_embeddings.cnn import process
from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.inference import SCHEMA, predict_splits
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_file, save_npz, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.data.prepared import load_prepared


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
    t0 = time.perf_counter()
    p = load_params("predict", SCHEMA, args.params)
    saved = read_config(args.model)  # before JAX starts: it decides the host setup
    # The convolutions give the same numbers up to float rounding: where the model's own
    # cannot run here, the fastest one that can does (and f32 where bf16 cannot).
    saved_impl = saved["model"]["conv_impl"]
    choice = process.start(
        "auto" if saved_impl == "onednn" else saved_impl,
        saved["inference"]["cpu_devices"],
        [p["batch_size"]],
        precision=saved["model"].get("precision", "f32"),
        peer_timeout=load_params("hosts", devices.HOSTS, args.params)["peer_timeout"],
    )

    data = load_prepared(args.prepared, p["splits"])
    model = load_model(args.model, conv_impl=choice.impl, precision=choice.precision)
    if model[3].num_classes != len(data.classes):
        raise PipelineError(
            f"{args.model} predicts {model[3].num_classes} classes but {args.prepared} has "
            f"{len(data.classes)}; rerun `dvc repro train`"
        )
    arrays, summary = predict_splits(data, model, p["splits"], p["batch_size"])
    if not devices.is_primary():  # a multi-host job: every host has the result, one writes
        return
    with atomic_file(args.out) as tmp:
        save_npz(tmp, arrays)
    seconds = round(time.perf_counter() - t0, 1)
    args.timings.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.timings, {"wall_seconds": seconds, "pictures": len(arrays["labels"])})
    print(json.dumps({**summary, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    run_main(main)
