"""What the train and predict stages do, from params to files (the stages parse arguments).

`train_classifier` reads the prepared dataset, params.yaml's `train:` and `hosts:` sections
and dvc.yaml (the train stage's dependencies, which the resume checkpoint's fingerprint
covers); it writes the model folder (cnn/checkpoint.py), the headline metrics, the wall
times, and dvclive's per-epoch curves, and keeps a resume checkpoint while it runs
(cnn/resume.py). `predict_classifier` reads the prepared dataset, a model folder and
`predict:`; it writes the predictions file (predictions.py's contract; every picture, the
unseen classes' too) and the wall times.
In a multi-process job (host.py) every process computes and process 0 alone writes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from confusion_embeddings import host
from confusion_embeddings.cnn import conv
from confusion_embeddings.cnn.checkpoint import load_model, read_config, save_model
from confusion_embeddings.cnn.config import RunConfig, check_seed
from confusion_embeddings.cnn.inference import predict_splits
from confusion_embeddings.cnn.network import count_flops
from confusion_embeddings.cnn.resume import Resume, fingerprint
from confusion_embeddings.cnn.training import Trained, muon_flops_per_step, train_and_evaluate
from confusion_embeddings.config.hosts import HOSTS
from confusion_embeddings.config.predict import SCHEMA as PREDICT_SCHEMA
from confusion_embeddings.config.train import SCHEMA
from confusion_embeddings.core.cli import stage_deps
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_file, save_npz, write_json
from confusion_embeddings.core.params import params_section, read_params_file
from confusion_embeddings.data.prepared import load_prepared
from confusion_embeddings.data.selection import known_classes, without_classes


@dataclass(frozen=True)
class TrainOutputs:
    """Where the train stage writes (dvc.yaml names every path)."""

    model: Path
    metrics: Path
    timings: Path
    live: Path  # dvclive's per-epoch curves
    checkpoints: Path  # the resume checkpoint's folder, this classifier's own


def start_host(
    choice: conv.ConvChoice,
    cpu_devices: int | str,
    batch_sizes: Sequence[int],
    doc: dict[str, Any],
    params_file: Path,
) -> None:
    """Say a convolution or precision fallback (one line), then host.start before JAX runs
    (with params `hosts` from `doc`, the params file as read)."""
    if choice.warning:
        print(choice.warning, file=sys.stderr)
    hosts = params_section(doc, "hosts", HOSTS, params_file)
    host.start(cpu_devices, batch_sizes, choice.impl, hosts)


def train_classifier(seed: int, prepared: Path, out: TrainOutputs, params_file: Path) -> None:
    """Train the classifier of `seed` and write its model, metrics, timings and curves."""
    t0 = time.perf_counter()
    doc = read_params_file(params_file)  # once: train, hosts, and the deps' placeholders
    params = params_section(doc, "train", SCHEMA, params_file)
    check_seed(seed)  # before JAX starts (RunConfig checks it too)
    choice = conv.resolve(params["conv_impl"], params["precision"])
    batch_sizes = [params["batch_size"], params["eval_batch_size"]]
    start_host(choice, params["cpu_devices"], batch_sizes, doc, params_file)
    data = without_classes(load_prepared(prepared, ["train", "test"]), tuple(params["unseen"]))
    if params["unseen"]:
        print(f"train: leaving out {params['unseen']}; {len(data.classes)} classes remain")
    run = RunConfig.resolve(params, seed, len(data.classes), choice)
    deps = stage_deps("train", item=seed, params=doc)
    resume = Resume(out.checkpoints, fingerprint(run, deps))
    live = _EpochLog(out.live) if host.is_primary() else None
    trained = train_and_evaluate(data, run, resume, on_epoch=live or _skip)
    print(f"test accuracy with test-time augmentation: {trained.test_accuracy:.4f}", flush=True)
    if live is None:
        return
    live.end()
    save_model(out.model, run, trained.norm, trained.state["params"], trained.state["rest"])
    flops_per_image = 3 * count_flops(run.model, data.image_hw)  # forward + both gradients
    metrics = _train_metrics(run, trained, flops_per_image)
    timings = {
        "train_seconds": round(trained.train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "images_per_second": round(trained.images_trained / trained.train_seconds, 1),
        "gflops_per_image_train": round(flops_per_image / 1e9, 4),
        "device_count": jax.device_count(),
    }
    write_json(out.metrics, metrics)
    out.timings.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.timings, timings)
    resume.remove()
    print(json.dumps({**metrics, **timings}, indent=2))


def _skip(record: dict[str, float]) -> None:
    """Another process of a job: process 0 writes the curves."""


def _train_metrics(run: RunConfig, trained: Trained, flops_per_image: int) -> dict[str, Any]:
    """The headline figures; `train_pflops` (training FLOPs per picture x pictures through
    the train step) compares recipes by compute on any CPU, where seconds do not;
    `optimizer_pflops` adds what the optimizer computes beside the network (Muon's
    Newton-Schulz iterations, once a step; 0 under SGD, whose update is elementwise)."""
    last = trained.history[-1]
    steps = trained.images_trained // run.train.batch_size
    per_step = muon_flops_per_step(trained.state["params"]) if run.train.optimizer == "muon" else 0
    return {
        "test_accuracy": round(trained.test_accuracy, 6),
        "test_accuracy_no_tta": trained.test_accuracy_one_view,
        "train_accuracy": last["train/accuracy"],
        "train_loss": last["train/loss"],
        "train_pflops": float(f"{flops_per_image * trained.images_trained / 1e15:.4g}"),
        "optimizer_pflops": float(f"{per_step * steps / 1e15:.4g}"),
        "conv_impl_used": run.conv_impl,
        "precision_used": run.precision,
        "backend": jax.default_backend(),
        "cpu": host.cpu_isa(),
    }


class _EpochLog:
    """dvclive's logger for the per-epoch curves, opened at the first record: a run that
    stops at a bad param before training leaves no curves behind."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.live = folder, None

    def __call__(self, record: dict[str, float]) -> None:
        if self.live is None:
            self.live = _open_live(self.folder)
        for k, v in record.items():
            if k != "epoch":
                self.live.log_metric(k, v)
        self.live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def _open_live(folder: Path):
    from dvclive import Live  # slow to import, and only needed here
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None)
    except SCMError as e:  # dvclive asks git for the current commit, even with no commit
        raise PipelineError(
            f"dvclive could not read the git repository ({e}); commit once "
            "(`git add -A && git commit -m init`) and rerun `dvc repro` (training resumes "
            "from its checkpoint)"
        ) from e


def predict_classifier(
    model_dir: Path, prepared: Path, out: Path, timings: Path, params_file: Path
) -> None:
    """Run a trained classifier over every picture of params `predict.splits`; write the
    predictions file and the wall time."""
    t0 = time.perf_counter()
    doc = read_params_file(params_file)  # once: predict and hosts
    p = params_section(doc, "predict", PREDICT_SCHEMA, params_file)
    saved = read_config(model_dir)  # before JAX starts: it decides the host setup
    choice = conv.resolve_saved(saved.conv_impl, saved.precision)
    start_host(choice, saved.train.cpu_devices, [p["batch_size"]], doc, params_file)
    data = load_prepared(prepared, p["splits"])
    unseen = saved.train.unseen
    known = known_classes(data.classes, unseen)
    if saved.num_classes != len(known):
        less = f" (less {len(unseen)} unseen)" if unseen else ""
        raise PipelineError(
            f"{model_dir} predicts {saved.num_classes} classes but {prepared} has "
            f"{len(data.classes)}{less}; rerun `dvc repro train`"
        )
    model = load_model(model_dir, saved.running(choice))
    arrays, summary = predict_splits(
        data, model, known, p["splits"], p["batch_size"], scores=p["scores"]
    )
    if not host.is_primary():  # a multi-process job: every process has the result, one writes
        return
    with atomic_file(out) as tmp:
        save_npz(tmp, arrays)
    seconds = round(time.perf_counter() - t0, 1)
    timings.parent.mkdir(parents=True, exist_ok=True)
    write_json(timings, {"wall_seconds": seconds, "pictures": len(arrays["labels"])})
    print(json.dumps({**summary, "seconds": seconds}, indent=2))
