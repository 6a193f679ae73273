"""What the CNN tests share (tests of confusion_embeddings/cnn and devices.py, and of the
train stage): the tiny recipe, a train-stage project, fake CPU flags, the stage as a subprocess."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from confusion_embeddings import host
from confusion_embeddings.cnn import conv as conv_module
from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.config import RunConfig, TrainParams
from confusion_embeddings.config.train import SCHEMA
from confusion_embeddings.core.params import validate_section

from helpers import ROOT, TINY_TRAIN, make_prepared, scratch_project, stage_argv, stage_options

TINY = {**TINY_TRAIN, "warmup_fraction": 0.5}
OPTIONS = stage_options("train")  # --prepared, --model, ... as dvc.yaml names them


def tiny_params(**over) -> dict:
    return validate_section("train", {**TINY, **over}, SCHEMA)


def tiny_train(**over) -> TrainParams:
    return TrainParams.from_dict(tiny_params(**over))


def tiny_run(
    num_classes: int = 4,
    conv_impl: str | None = None,
    precision: str = "f32",
    seed: int = 0,
    **over,
) -> RunConfig:
    """The run of tiny_params(**over) as train builds it; its convolution and precision
    resolved from train.conv_impl and train.precision, unless `conv_impl` is given (then
    it runs with `precision`)."""
    p = tiny_params(**over)
    choice = (
        conv_module.ConvChoice(conv_impl, precision)
        if conv_impl
        else conv_module.resolve(p["conv_impl"], p["precision"])
    )
    return RunConfig.resolve(p, seed, num_classes, choice)


def train_project(
    folder: Path, train: int = 32, test: int = 8, num_classes: int = 4, **over
) -> Path:
    """A project for the train stage: dvc.yaml, params.yaml (train: TINY + over), and a
    prepared dataset at dvc.yaml's --prepared."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({**TINY, **over})
    scratch_project(folder, params)
    make_prepared(folder / OPTIONS["--prepared"], num_classes=num_classes, train=train, test=test)
    return folder


# --------------------------------------------------------------------------- precision

NO_BF16 = "x86_64 avx2 avx512f"  # an AVX-512 CPU without bfloat16 instructions
WITH_BF16 = "x86_64 avx2 avx512f avx512_bf16"
KERNEL = onednn.available() and conv_module.resolve("auto", "f32").impl == "onednn"


def fake_cpu_isa(monkeypatch, isa: str) -> None:
    monkeypatch.setattr(host, "cpu_isa", lambda: isa)


# --------------------------------------------------------------------------- subprocess runs


def train_cmd(tag: str) -> list[str]:
    """`python -m stages.train` with dvc.yaml's command line, its outputs renamed by `tag`
    (run from a train_project folder; the resume checkpoints stay where dvc.yaml puts them)."""
    return [
        sys.executable,
        "-m",
        "stages.train",
        *stage_argv(
            "train",
            model=f"model-{tag}",
            metrics=f"train-{tag}.json",
            timings=f"timings-{tag}.json",
            live=f"live-{tag}",
        ),
    ]


def train_env(devices: int, tmp: Path) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    return env


def device_count(tmp: Path, tag: str) -> int:
    """The JAX device count a train_cmd(tag) run recorded in its timings."""
    return json.loads((tmp / f"timings-{tag}.json").read_text())["device_count"]


def train_metrics(tmp: Path, tag: str) -> dict:
    m = json.loads((tmp / f"train-{tag}.json").read_text())
    return {k: m[k] for k in ("test_accuracy", "train_accuracy", "train_loss")}
