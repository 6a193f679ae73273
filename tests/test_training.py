"""confusion_embeddings/cnn/training.py: augmentation, the train step, and training that
learns the synthetic classes (f32 and bf16)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from confusion_embeddings import host
from confusion_embeddings.cnn import training
from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.cnn.training import (
    LOOKAHEAD_DECAY,
    LOOKAHEAD_EVERY,
    alternate_flips,
    augment,
    create_train_state,
    lookahead_finish,
    lookahead_sync,
    make_train_step,
    train_and_evaluate,
)
from confusion_embeddings.core.errors import PipelineError
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


def test_augment_mirrors_exactly_the_pictures_flips_names():
    imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)), jnp.uint8)
    flips = jnp.asarray([True, False, False, True])
    out = np.asarray(augment(imgs, jax.random.key(1), 0, True, flips))
    want = np.where(np.asarray(flips)[:, None, None, None], imgs[:, :, ::-1], imgs)
    np.testing.assert_array_equal(out, want)


def test_alternate_flips_are_drawn_once_per_seed():
    first = alternate_flips(seed=3, n=1000)
    assert first.dtype == bool and 400 < first.sum() < 600  # about half, drawn once
    np.testing.assert_array_equal(first, alternate_flips(seed=3, n=1000))
    assert not np.array_equal(first, alternate_flips(seed=4, n=1000))


def test_alternate_flip_needs_flip():
    with pytest.raises(PipelineError, match="train.alternate_flip"):
        tiny_run(4, flip=False, alternate_flip=True)


def test_lookahead_moves_the_slow_copy_every_fifth_step_and_keeps_it():
    run = tiny_run(4, lookahead=True)
    _, state, _ = create_train_state(run, total_steps=10)
    slow0 = state["slow"]
    moved = jax.tree.map(lambda a: a + 1.0, (state["params"], state["rest"]))
    at = {**state, "params": moved[0], "rest": moved[1]}

    # Step 4: not due; nothing changes.
    off = lookahead_sync({**at, "step": jnp.asarray(4, jnp.int32)}, 10)
    chex.assert_trees_all_equal(off["slow"], slow0)
    chex.assert_trees_all_equal((off["params"], off["rest"]), moved)

    # Step 5 of 10: the slow copy moves by 1 - decay toward the weights, which jump to it.
    on = lookahead_sync({**at, "step": jnp.asarray(LOOKAHEAD_EVERY, jnp.int32)}, 10)
    step = 1.0 - LOOKAHEAD_DECAY * 0.5**3
    chex.assert_trees_all_close(on["slow"], jax.tree.map(lambda a: a + step, slow0), rtol=1e-6)
    chex.assert_trees_all_equal((on["params"], on["rest"]), on["slow"])

    kept = lookahead_finish({**on, "params": moved[0], "rest": moved[1]})
    chex.assert_trees_all_equal((kept["params"], kept["rest"]), on["slow"])


def test_saved_run_config_holds_the_new_keys_only_when_set():
    plain, levers = tiny_run(4), tiny_run(4, lookahead=True, alternate_flip=True)
    assert not {"lookahead", "alternate_flip"} & set(plain.to_dict()["train"])
    assert levers.to_dict()["train"]["lookahead"] is True
    for run in (plain, levers):
        assert RunConfig.from_dict(run.to_dict()) == run


def test_train_step_compiles_once(monkeypatch):
    """Static shapes: four batches, one trace (chex counts them; a second one fails)."""
    run = tiny_run(4)
    graphdef, state, tx = create_train_state(run, total_steps=10)
    jit = jax.jit
    with monkeypatch.context() as m:  # the step make_train_step jits, traced at most once
        m.setattr(jax, "jit", lambda fn, **kw: jit(chex.assert_max_traces(fn, n=1), **kw))
        step = make_train_step(graphdef, tx, (jnp.zeros(3), jnp.ones(3)), run.train)
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


def test_learns_with_lookahead_and_alternate_flip(tmp_path, monkeypatch):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    run = tiny_run(4, epochs=4, lookahead=True, alternate_flip=True)
    flips, train_epoch = [], training.train_epoch

    def recording(*args):
        flips.append(args[-1])
        return train_epoch(*args)

    monkeypatch.setattr(training, "train_epoch", recording)
    data = load_prepared(prepared)
    trained = train_and_evaluate(data, run, show_progress=False)
    assert trained.test_accuracy >= 0.9, trained.history
    # Epochs 1 and 3 mirror the pictures epochs 0 and 2 did not: each seen both ways.
    first = alternate_flips(run.seed, len(data.splits["train"].labels))
    for epoch, f in enumerate(flips):
        np.testing.assert_array_equal(f, first if epoch % 2 == 0 else ~first)
    assert len(flips) == 4
    # The run keeps the slow copy's weights.
    chex.assert_trees_all_equal(trained.state["params"], trained.state["slow"][0])


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
