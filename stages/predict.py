"""Stage `predict`: run the trained CNN over every picture of the chosen splits.

Reads:  data/prepared/, models/cnn/, the `predict:` section of params.yaml.
Writes: the predictions file (default data/predictions.npz) in the contract of
        stages/predictions.py: `labels` int32 [N], `classes` str [C], `probs` float32 [N, C],
        `split` int8 [N] indexing `splits` str [S], and `groups` (a JSON string, "null" when
        the dataset has no class grouping).

Inference is jitted with static shapes (the last batch is padded and the padding dropped)
and sharded over every local device like training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from stages import parallel
from stages.common import Param, PipelineError, at_least, atomic_file, load_params, run_main
from stages.dataset import load_prepared
from stages.model import load_model, make_inference_fn, saved_conv_impl

SCHEMA = {
    "splits": Param(list, ["train", "test"], lambda v: None if v and all(
        isinstance(s, str) for s in v) and len(set(v)) == len(v)
        else "a non-empty list of distinct split names"),
    "batch_size": Param(int, 1000, at_least(1)),
    "tta_flip": Param(bool, True),
    "tta_translate": Param(int, 1, at_least(0)),
    "cpu_devices": parallel.CPU_DEVICES,
}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(prepared_dir: str | Path, model_dir: str | Path, out_file: str | Path,
            p: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Write the predictions file; return a short summary (pictures, accuracy per split)."""
    t0 = time.perf_counter()
    parallel.init_distributed()
    parallel.enable_compilation_cache()
    data = load_prepared(prepared_dir, p["splits"])
    graphdef, params, rest, cfg, norm = load_model(model_dir)
    if cfg.num_classes != len(data.classes):
        raise PipelineError(
            f"{model_dir} predicts {cfg.num_classes} classes but {prepared_dir} has "
            f"{len(data.classes)}; rerun `dvc repro train`"
        )
    parallel.check_batch_size(p["batch_size"], "predict.batch_size")
    with parallel.data_parallel() as mesh:  # the mesh the network's convolutions see
        params, rest = jax.device_put((params, rest), parallel.replicated(mesh))
        infer = make_inference_fn(graphdef, norm, tta_flip=p["tta_flip"],
                                  tta_translate=p["tta_translate"])

        labels, probs, split_ids, summary = [], [], [], {}
        for i, name in enumerate(p["splits"]):
            split = data.splits[name]
            logits = parallel.map_batches(lambda x: infer(params, rest, x), split.images,
                                          p["batch_size"], mesh, progress, desc=f"predict {name}")
            probs.append(softmax(logits))
            labels.append(split.labels)
            split_ids.append(np.full(len(split.labels), i, np.int8))
            summary[name] = {"pictures": len(split.labels),
                             "accuracy": round(float((logits.argmax(1) == split.labels).mean()), 6)}
    with atomic_file(out_file) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            labels=np.concatenate(labels).astype(np.int32),
            classes=np.array(data.classes),
            probs=np.concatenate(probs).astype(np.float32),
            split=np.concatenate(split_ids),
            splits=np.array(p["splits"]),
            groups=np.array(json.dumps(data.groups)),
        )
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="predictions file to write (.npz)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = load_params("predict", SCHEMA, args.params)
    parallel.prepare_host(p["cpu_devices"], [p["batch_size"]], saved_conv_impl(args.model))
    print(json.dumps(predict(args.prepared, args.model, args.out, p), indent=2))


if __name__ == "__main__":
    run_main(main)
