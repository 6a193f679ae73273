"""The trained model on disk: `<model>/config.json` + `<model>/model.msgpack`.

Writes (train) / reads (predict) a folder holding
    config.json    {"model": ModelConfig fields (conv_impl and precision: those that ran),
                    "inference": {tta_flip, tta_translate, cpu_devices, holdout},
                    "pixel_mean": [3], "pixel_std": [3]}: everything
                   predict needs to run the network as train ran it (holdout: the
                   training fold it never saw under cross-fitting, or null)
    model.msgpack  the Flax state (parameters and batch-norm statistics) as plain arrays;
                   no pickle
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, serialization

from confusion_embeddings.cnn.network import CNN, ModelConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.msgpack"


def save_model(
    out_dir: str | Path, cfg: ModelConfig, inference: dict[str, Any], norm, params, rest
) -> None:
    """Write the folder atomically: a reader sees the old model or the new one, whole."""
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "model": cfg.to_dict(),
                    "inference": inference,
                    "pixel_mean": np.asarray(norm[0]).tolist(),
                    "pixel_std": np.asarray(norm[1]).tolist(),
                },
                indent=2,
            )
            + "\n"
        )
        blob = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
        (tmp / WEIGHTS_FILE).write_bytes(
            serialization.msgpack_serialize(jax.tree.map(np.asarray, blob))
        )


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """config.json as saved by train; readable before JAX starts (predict sets up the host
    from it). Raises PipelineError when the folder holds no model."""
    model_dir = Path(model_dir)
    cfg_file, blob_file = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not cfg_file.exists() or not blob_file.exists():
        raise PipelineError(f"{model_dir}: no trained model; run `dvc repro train` first")
    try:
        meta = json.loads(cfg_file.read_text())
        ModelConfig.from_dict(meta["model"])
        meta["inference"]["cpu_devices"]  # noqa: B018 - present in every saved model
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{cfg_file}: not a model config written by the train stage "
            f"({type(exc).__name__}: {exc}); rerun `dvc repro train`"
        ) from None
    return meta


def load_model(model_dir: str | Path, conv_impl: str | None = None, precision: str | None = None):
    """Return (graphdef, params, rest, cfg, inference settings, (mean, std)); `conv_impl`
    and `precision` replace the saved convolution and precision (cnn/conv.py)."""
    meta = read_config(model_dir)
    cfg = ModelConfig.from_dict(meta["model"])
    if conv_impl is not None:
        cfg = dataclasses.replace(cfg, conv_impl=conv_impl)
    if precision is not None:
        cfg = dataclasses.replace(cfg, precision=precision)
    graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    blob = serialization.msgpack_restore((Path(model_dir) / WEIGHTS_FILE).read_bytes())
    nnx.replace_by_pure_dict(params, blob["params"])
    nnx.replace_by_pure_dict(rest, blob["rest"])
    norm = (np.asarray(meta["pixel_mean"], np.float32), np.asarray(meta["pixel_std"], np.float32))
    return graphdef, params, rest, cfg, meta["inference"], norm
