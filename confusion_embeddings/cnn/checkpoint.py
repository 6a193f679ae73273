"""The trained model on disk: `<model>/config.json` + `<model>/model.msgpack`.

Writes (train) / reads (predict) a folder holding
    config.json    {"run": the RunConfig (cnn/config.py: seed, class count, train params,
                    the convolution and precision that ran), "pixel_mean": [3],
                    "pixel_std": [3]}: everything predict needs to run the network as
                   train ran it
    model.msgpack  the Flax state (parameters and batch-norm statistics) as plain arrays;
                   no pickle
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, serialization

from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.cnn.network import CNN
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.msgpack"


@dataclass(frozen=True)
class Model:
    """A trained network, ready to run: `nnx.merge(graphdef, params, rest)` rebuilds it."""

    graphdef: Any
    params: Any
    rest: Any  # batch-norm statistics (and the stem's frozen whitening, under train.whiten)
    run: RunConfig
    norm: tuple[np.ndarray, np.ndarray]  # per-channel pixel mean and std, from training


def save_model(out_dir: str | Path, run: RunConfig, norm, params, rest) -> None:
    """Write the folder atomically: a reader sees the old model or the new one, whole."""
    with atomic_dir(out_dir) as tmp:
        config = {
            "run": run.to_dict(),
            "pixel_mean": np.asarray(norm[0]).tolist(),
            "pixel_std": np.asarray(norm[1]).tolist(),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        blob = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
        (tmp / WEIGHTS_FILE).write_bytes(
            serialization.msgpack_serialize(jax.tree.map(np.asarray, blob))
        )


def read_config(model_dir: str | Path) -> RunConfig:
    """The RunConfig train saved; readable before JAX starts (predict sets up the host from
    it). Raises PipelineError when the folder holds no model, or not one of this version."""
    return _read_config_file(Path(model_dir))[0]


def _read_config_file(model_dir: Path) -> tuple[RunConfig, tuple[np.ndarray, np.ndarray]]:
    """The saved RunConfig and pixel norm, each parsed once."""
    cfg_file, blob_file = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not cfg_file.exists() or not blob_file.exists():
        raise PipelineError(f"{model_dir}: no trained model; run `dvc repro train` first")
    try:
        meta = json.loads(cfg_file.read_text())
        run = RunConfig.from_dict(meta["run"])
        norm = (
            np.asarray(meta["pixel_mean"], np.float32),
            np.asarray(meta["pixel_std"], np.float32),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{cfg_file}: not a model config written by this version's train stage "
            f"({type(exc).__name__}: {exc}); rerun `dvc repro train`"
        ) from None
    return run, norm


def load_model(model_dir: str | Path, running: RunConfig | None = None) -> Model:
    """The saved model, built to run as `running` says (the saved RunConfig with the
    convolution and precision that run here: RunConfig.running) or else as it was saved."""
    model_dir = Path(model_dir)
    saved, norm = _read_config_file(model_dir)
    run = running or saved
    graphdef, params, rest = nnx.split(CNN(run.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    blob = serialization.msgpack_restore((model_dir / WEIGHTS_FILE).read_bytes())
    nnx.replace_by_pure_dict(params, blob["params"])
    nnx.replace_by_pure_dict(rest, blob["rest"])
    return Model(graphdef, params, rest, run, norm)
