"""confusion_embeddings/cnn/training.py: augmentation, the train step, and training that
learns the synthetic classes (f32 and bf16)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from confusion_embeddings import host
from confusion_embeddings.cnn.training import (
    augment,
    create_train_state,
    make_train_step,
    train_and_evaluate,
    training_steps,
)
from confusion_embeddings.data.prepared import load_prepared

from cnn_helpers import KERNEL, tiny_run
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


def test_train_step_compiles_once(monkeypatch):
    """Static shapes: four batches, one trace (chex counts them; a second one fails)."""
    run = tiny_run(4)
    graphdef, state, tx = create_train_state(run, total_steps=10)
    jit = jax.jit
    with monkeypatch.context() as m:  # the step make_train_step jits, traced at most once
        m.setattr(jax, "jit", lambda fn, **kw: jit(chex.assert_max_traces(fn, n=1), **kw))
        step = make_train_step(graphdef, tx, (jnp.zeros(3), jnp.ones(3)), run.train, 10)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8)
        y = rng.integers(0, 4, 16).astype(np.int32)
        state, loss, _ = step(state, x, y)
    assert int(state["step"]) == 4 and np.isfinite(float(loss))
    with pytest.raises(AssertionError, match="traced > 1 times"):  # the count is live
        step(state, x[:8], y[:8])


def test_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    seen = []
    trained = train_and_evaluate(
        load_prepared(prepared), tiny_run(4, epochs=4), on_epoch=seen.append, show_progress=False
    )
    assert trained.test_accuracy >= 0.9, trained.history
    assert [rec["epoch"] for rec in seen] == [1, 2, 3, 4] and seen == trained.history


def test_a_fractional_epoch_count_ends_part_way_through_the_last_epoch(tmp_path):
    assert training_steps(7, 97) == 679 and training_steps(6.5, 97) == 630
    assert training_steps(1.0, 1) == 1 and training_steps(1.2, 4) == 5
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    run = tiny_run(4, epochs=1.5)
    data = load_prepared(prepared)
    per_epoch = len(data.splits["train"].labels) // run.train.batch_size
    trained = train_and_evaluate(data, run, show_progress=False)
    # One whole epoch, then the first half of the second's order: the half is its own record.
    assert [rec["epoch"] for rec in trained.history] == [1, 2]
    assert int(trained.state["step"]) == per_epoch + per_epoch // 2
    assert trained.images_trained == (per_epoch + per_epoch // 2) * run.train.batch_size


@pytest.mark.skipif(
    not (KERNEL and host.native_bf16()), reason="needs the oneDNN kernel and a bf16 CPU"
)
def test_bf16_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    run = tiny_run(4, "onednn", "bf16", epochs=4)
    trained = train_and_evaluate(load_prepared(prepared), run, show_progress=False)
    assert trained.test_accuracy >= 0.9, trained.history
    # The master weights and batch-norm statistics stay float32.
    assert {a.dtype for a in jax.tree.leaves(trained.state)} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
        jnp.dtype(jnp.uint32),
    }
