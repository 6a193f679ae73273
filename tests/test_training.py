"""confusion_embeddings/cnn/training.py: augmentation, the train step, and training that
learns the synthetic classes (f32 and bf16)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from confusion_embeddings import devices as parallel
from confusion_embeddings.cnn import conv as conv_module
from confusion_embeddings.cnn.network import CNN
from confusion_embeddings.cnn.training import (
    augment,
    make_optimizer,
    make_train_step,
    train_and_evaluate,
)
from confusion_embeddings.data.prepared import load_prepared

from cnn_helpers import KERNEL, tiny_config, tiny_params
from helpers import make_prepared


def test_augment_keeps_pixels_and_shape():
    imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3)), jnp.uint8)
    out = augment(imgs, jax.random.key(1), translate=2, flip=True)
    assert out.shape == imgs.shape
    # A shift with reflect padding and a flip only move pixels: the set of values in the
    # central 4x4 of the output comes from the input picture.
    assert set(np.unique(np.asarray(out[0]))) <= set(np.unique(np.asarray(imgs[0])))
    same = augment(imgs, jax.random.key(1), translate=2, flip=True)
    np.testing.assert_array_equal(out, same)
    np.testing.assert_array_equal(augment(imgs, jax.random.key(1), 0, False), imgs)


def test_train_step_compiles_once():
    p = tiny_params()
    cfg = tiny_config(4)
    graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = make_optimizer(p, 10)
    state = {
        "params": params,
        "rest": rest,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(0)),
    }
    step = make_train_step(graphdef, tx, (jnp.zeros(3), jnp.ones(3)), p)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8)
        y = rng.integers(0, 4, 16).astype(np.int32)
        state, loss, _ = step(state, x, y)
    assert step._cache_size() == 1
    assert int(state["step"]) == 4 and np.isfinite(float(loss))


def test_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    p = tiny_params(epochs=4)
    seen = []
    trained = train_and_evaluate(
        load_prepared(prepared),
        p,
        0,
        conv_module.resolve(p["conv_impl"]).impl,
        on_epoch=seen.append,
        show_progress=False,
    )
    assert trained.test_accuracy >= 0.9, trained.history
    assert [rec["epoch"] for rec in seen] == [1, 2, 3, 4] and seen == trained.history


@pytest.mark.skipif(
    not (KERNEL and parallel.native_bf16()), reason="needs the oneDNN kernel and a bf16 CPU"
)
def test_bf16_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    p = tiny_params(epochs=4)
    trained = train_and_evaluate(
        load_prepared(prepared), p, 0, "onednn", show_progress=False, precision="bf16"
    )
    assert trained.cfg.precision == "bf16"
    assert trained.test_accuracy >= 0.9, trained.history
    # The master weights and batch-norm statistics stay float32.
    assert {a.dtype for a in jax.tree.leaves(trained.state)} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
        jnp.dtype(jnp.uint32),
    }
