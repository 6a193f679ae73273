"""confusion_embeddings/cnn/checkpoint.py: the saved RunConfig (read before JAX starts, missing
or broken, loaded back as the same object) and loading a model with another convolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from confusion_embeddings.cnn.checkpoint import load_model, read_config, save_model
from confusion_embeddings.cnn.conv import ConvChoice
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.core.errors import PipelineError

from cnn_helpers import tiny_run
from helpers import ROOT, save_tiny_model

_READ_CONFIG = """
import json, sys
from confusion_embeddings.cnn.checkpoint import read_config
from confusion_embeddings.host import _backends_running
meta = read_config(sys.argv[1])
print(json.dumps({"conv_impl": meta.conv_impl, "jax_started": _backends_running()}))
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


def test_the_run_config_round_trips(tmp_path):
    """train saves its RunConfig as config.json; read_config and load_model give back the
    same object, every field named."""
    from flax import nnx

    from confusion_embeddings.cnn.network import CNN

    run = tiny_run(3, conv_impl="matmul", seed=7, crossfit_folds=3, tta_translate=2)
    _, params, rest = nnx.split(CNN(run.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    save_model(tmp_path / "m", run, (np.zeros(3), np.ones(3)), params, rest)
    assert read_config(tmp_path / "m") == run
    assert load_model(tmp_path / "m").run == run
    assert run.holdout.folds == 3 and run.holdout.fold == 7 % 3
    assert run.model.conv_impl == "matmul" and run.model.num_classes == 3
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["run"]["train"]["tta_translate"] == 2 and saved["run"]["seed"] == 7


def test_read_config_of_a_missing_or_broken_model(tmp_path):
    """A folder without a model, or with a config this version's train stage did not
    write, is a PipelineError naming it."""
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
    run = read_config(model)
    assert run.conv_impl == "matmul" and run.num_classes == 3
    assert (run.train.tta_flip, run.train.tta_translate, run.train.cpu_devices) == (True, 2, 4)
    assert load_model(model).run == run and len(load_model(model).norm[0]) == 3
    good = json.loads((model / "config.json").read_text())
    old_format = {"model": good["run"], "inference": {}, "pixel_mean": [0] * 3}
    no_field = {**good, "run": {k: v for k, v in good["run"].items() if k != "seed"}}
    for broken in ("{not json", json.dumps(old_format), json.dumps(no_field), "[]"):
        (model / "config.json").write_text(broken)
        with pytest.raises(PipelineError, match="not a model config written by this version"):
            read_config(model)
    (model / "config.json").write_text(json.dumps(good))
    (model / "model.msgpack").unlink()
    with pytest.raises(PipelineError, match="no trained model"):
        read_config(model)


def test_load_model_replaces_the_saved_convolution(tmp_path):
    model = save_tiny_model(tmp_path / "model", num_classes=3, conv_impl="onednn")
    saved = read_config(model)
    assert load_model(model).run.conv_impl == "onednn"
    # The same weights through another convolution: the same logits up to rounding.
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)
    logits = {}
    for impl in ("xla", "matmul"):
        m = load_model(model, saved.running(ConvChoice(impl, "f32")))
        assert m.run.model.conv_impl == impl and m.run.num_classes == 3
        logits[impl] = np.asarray(make_inference_fn(m.graphdef, m.norm)(m.params, m.rest, x))
    np.testing.assert_allclose(logits["xla"], logits["matmul"], rtol=1e-5, atol=1e-6)
