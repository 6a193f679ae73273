"""confusion_embeddings/cnn/checkpoint.py: reading a saved model's config (before JAX starts,
missing or broken) and loading it with another convolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import ModelConfig
from confusion_embeddings.core.errors import PipelineError

from helpers import ROOT, save_tiny_model

_READ_CONFIG = """
import json, sys
from confusion_embeddings.cnn.checkpoint import read_config
from confusion_embeddings.devices import _backends_running
meta = read_config(sys.argv[1])
print(json.dumps({"conv_impl": meta["model"]["conv_impl"], "jax_started": _backends_running()}))
"""


def test_read_config_before_jax_starts(tmp_path):
    """predict learns the model's settings (convolution, devices, test-time augmentation)
    from read_config before JAX starts: reading them must not start JAX's backends."""
    save_tiny_model(tmp_path / "model", num_classes=3, conv_impl="matmul", cpu_devices=2)
    out = subprocess.run(
        [sys.executable, "-c", _READ_CONFIG, str(tmp_path / "model")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    ).stdout
    assert json.loads(out) == {"conv_impl": "matmul", "jax_started": False}


def test_read_config_of_a_missing_or_broken_model(tmp_path):
    """read_config (replaces saved_conv_impl): the whole saved config; a folder without a
    model, or with a config the train stage did not write, is a PipelineError naming it."""
    with pytest.raises(PipelineError, match=r"none: no trained model; run `dvc repro train`"):
        read_config(tmp_path / "none")
    model = save_tiny_model(
        tmp_path / "model",
        num_classes=3,
        conv_impl="matmul",
        tta_flip=True,
        tta_translate=2,
        cpu_devices=4,
    )
    meta = read_config(model)
    assert meta["model"]["conv_impl"] == "matmul" and meta["model"]["num_classes"] == 3
    assert meta["inference"] == {"tta_flip": True, "tta_translate": 2, "cpu_devices": 4}
    assert len(meta["pixel_mean"]) == len(meta["pixel_std"]) == 3
    assert ModelConfig.from_dict(meta["model"]) == load_model(model)[3]
    good = (model / "config.json").read_text()
    for broken in (
        "{not json",
        json.dumps({"model": {"conv_impl": "matmul"}}),
        json.dumps({**json.loads(good), "inference": {}}),
        "[]",
    ):
        (model / "config.json").write_text(broken)
        with pytest.raises(PipelineError, match="not a model config written by the train stage"):
            read_config(model)
    (model / "config.json").write_text(good)
    (model / "model.msgpack").unlink()
    with pytest.raises(PipelineError, match="no trained model"):
        read_config(model)


def test_load_model_replaces_the_saved_convolution(tmp_path):
    model = save_tiny_model(tmp_path / "model", num_classes=3, conv_impl="onednn")
    assert load_model(model)[3].conv_impl == "onednn"
    graphdef, params, rest, cfg, inference, norm = load_model(model, conv_impl="xla")
    assert cfg.conv_impl == "xla" and cfg.num_classes == 3
    # The same weights through another convolution: the same logits up to rounding.
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)
    logits = {}
    for impl in ("xla", "matmul"):
        graphdef, params, rest, cfg, inference, norm = load_model(model, conv_impl=impl)
        logits[impl] = np.asarray(make_inference_fn(graphdef, norm)(params, rest, x))
    np.testing.assert_allclose(logits["xla"], logits["matmul"], rtol=1e-5, atol=1e-6)
