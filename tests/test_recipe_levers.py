"""airbench's levers (cnn/network.py, cnn/training.py). train.whiten, train.dirac and
train.bias_lr_scale: each does what it says on planted inputs, is on by default and can be
turned off, and a whitened model saves and loads back whole. train.lookahead and
train.alternate_flip: each does what it says, is off by default, and a model saved with them
off holds the same config as before they existed. train.optimizer: muon (the default): the
filters take orthogonalised steps at a fixed norm, the rest the same SGD."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from confusion_embeddings.cnn import training
from confusion_embeddings.cnn.checkpoint import load_model, save_model
from confusion_embeddings.cnn.config import _SAVED_ONLY_IF_SET, RunConfig
from confusion_embeddings.cnn.conv import conv
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN, dirac, space_to_depth, whitening_matrix
from confusion_embeddings.cnn.training import (
    LOOKAHEAD_DECAY,
    LOOKAHEAD_EVERY,
    alternate_flips,
    augment,
    create_train_state,
    lookahead_finish,
    lookahead_sync,
    make_optimizer,
    muon_flops_per_step,
    patch_whitening,
    train_and_evaluate,
)
from confusion_embeddings.config.train import SCHEMA
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.prepared import load_prepared

from cnn_helpers import tiny_run, tiny_train
from helpers import make_prepared


def test_the_levers_are_on_by_default_and_each_can_be_turned_off():
    assert SCHEMA["whiten"].default is True and SCHEMA["dirac"].default is True
    assert SCHEMA["bias_lr_scale"].default == 64.0
    off = tiny_train(whiten=False)
    assert patch_whitening(np.zeros((4, 8, 8, 3), np.uint8), (0, 1), off) is None
    model = CNN(tiny_run(4, whiten=False).model, rngs=nnx.Rngs(0))
    assert not hasattr(model, "whitening")
    plain = CNN(tiny_run(4, dirac=False).model, rngs=nnx.Rngs(0))
    kernel = plain.blocks[0].conv2.kernel.get_value()
    assert not np.array_equal(kernel, dirac(kernel))  # a random init, not the identity


def test_whitening_decorrelates_the_patches():
    """Correlated channels (a shared component plus a little noise): after the matrix the
    patches' second moment is the identity, up to the eps added to each eigenvalue."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 8, 8, 1))
    images = np.concatenate([base + 0.1 * rng.normal(size=base.shape) for _ in range(3)], -1)
    w = whitening_matrix(images, 2, eps=1e-9)
    assert w.shape == (12, 12)
    patches = np.asarray(space_to_depth(images, 2)).reshape(-1, 12) @ w
    np.testing.assert_allclose(patches.T @ patches / len(patches), np.eye(12), atol=1e-4)
    # With eps, each direction keeps the share lambda / (lambda + eps) of its variance: the
    # weak ones (the noise) are damped, the strong ones (the shared component) kept.
    raw = np.asarray(space_to_depth(images, 2)).reshape(-1, 12)
    damped = raw @ whitening_matrix(images, 2, eps=1.0)
    lam = np.linalg.eigvalsh(raw.T @ raw / len(raw))
    np.testing.assert_allclose(
        np.linalg.eigvalsh(damped.T @ damped / len(damped)), lam / (lam + 1.0), atol=1e-4
    )


def test_dirac_starts_each_conv_as_the_identity():
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
    k = dirac(kernel)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
    y = conv(x, k, "xla")
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # the first cin filters pass through
    np.testing.assert_array_equal(k[..., 4:], kernel[..., 4:])  # the others keep their init
    shrink = jax.random.normal(jax.random.key(2), (3, 3, 6, 4))
    np.testing.assert_array_equal(dirac(shrink), shrink)  # cout < cin: no identity to give
    model = CNN(tiny_run(4, dirac=True).model, rngs=nnx.Rngs(0))
    block = model.blocks[0].conv2.kernel.get_value()  # cin == cout: the identity whole
    np.testing.assert_array_equal(block, dirac(jnp.zeros_like(block)))


def test_bias_lr_scale_scales_the_bias_steps_alone():
    params = {"bias": jnp.ones(3), "kernel": jnp.ones((3, 3))}
    grads = jax.tree.map(jnp.ones_like, params)
    steps = {}
    for scale in (1.0, 8.0):
        t = tiny_train(bias_lr_scale=scale, weight_decay=0.0, warmup_fraction=0.0)
        tx = make_optimizer(t, steps=10)
        _, opt = tx.update(grads, tx.init(params), params)  # the warm-up's step: lr 0
        steps[scale], _ = tx.update(grads, opt, params)
    np.testing.assert_allclose(steps[8.0]["bias"], 8 * steps[1.0]["bias"], rtol=1e-6)
    np.testing.assert_array_equal(steps[8.0]["kernel"], steps[1.0]["kernel"])
    assert float(jnp.abs(steps[1.0]["bias"]).max()) > 0


def test_a_whitened_model_trains_saves_and_loads_back(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    data = load_prepared(prepared)
    run = tiny_run(4, epochs=1, whiten=True, dirac=True, bias_lr_scale=16.0)
    trained = train_and_evaluate(data, run, show_progress=False)
    w = np.asarray(trained.state["rest"]["whitening"].get_value())
    assert w.shape == (12, 12) and not np.allclose(w, np.eye(12))  # set from the pictures
    # Frozen: the training state's matrix is the one measured before the first step.
    expected = patch_whitening(data.splits["train"].images, trained.norm, run.train)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    save_model(
        tmp_path / "model", run, trained.norm, trained.state["params"], trained.state["rest"]
    )
    m = load_model(tmp_path / "model")
    np.testing.assert_array_equal(np.asarray(m.rest["whitening"].get_value()), w)
    x = data.splits["test"].images[:4]
    before = make_inference_fn(trained.graphdef, trained.norm)(
        trained.state["params"], trained.state["rest"], x
    )
    after = make_inference_fn(m.graphdef, m.norm)(m.params, m.rest, x)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


def test_create_train_state_sets_the_whitening():
    w = np.arange(144, dtype=np.float32).reshape(12, 12)
    _, state, _ = create_train_state(tiny_run(4, whiten=True), 10, w)
    np.testing.assert_array_equal(np.asarray(state["rest"]["whitening"].get_value()), w)


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


def test_muon_steps_the_filters_orthogonally_at_a_fixed_norm_and_the_rest_by_sgd():
    rng = np.random.default_rng(0)
    params = {
        "conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32) * 0.3,
        "head": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
        "bias": jnp.ones(8),
    }
    grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    t_sgd = tiny_train(warmup_fraction=0.0)
    t_muon = tiny_train(warmup_fraction=0.0, optimizer="muon", muon_lr=0.1)
    after = {}
    for name, t in (("sgd", t_sgd), ("muon", t_muon)):
        tx = make_optimizer(t, steps=10)
        _, opt = tx.update(grads, tx.init(params), params)  # the warm-up's step: lr 0
        updates, _ = tx.update(grads, opt, params)
        after[name] = optax.apply_updates(params, updates)
    # The head and biases move exactly as under SGD; the filters do not.
    for k in ("head", "bias"):
        np.testing.assert_allclose(after["muon"][k], after["sgd"][k], rtol=1e-6)
    conv = params["conv"]
    target = np.sqrt(conv.shape[-1])  # the norm the filters are rescaled to before the step
    step = (after["muon"]["conv"] - conv * target / jnp.linalg.norm(conv)).reshape(-1, 8)
    # The step is orthogonalised: its singular values all near one (Newton-Schulz's band),
    # times the peak learning rate (the step after the one-step warm-up).
    s = np.linalg.svd(np.asarray(step) / 0.1, compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.3, s
    assert SCHEMA["optimizer"].default == "muon"


def test_muon_flops_per_step_counts_what_xla_compiles_for_the_filters():
    # The default network's seven filter banks and a head (2-D, SGD's: not counted). XLA's
    # cost analysis of the compiled orthogonalisation adds the elementwise work (momentum,
    # norms) to the matrix products the count is made of: a few per cent at most.
    shapes = [(3, 3, 12, 32), (3, 3, 32, 64), (3, 3, 64, 64), (3, 3, 64, 128)]
    shapes += [(3, 3, 128, 128), (3, 3, 128, 256), (3, 3, 256, 256)]
    filters = {f"conv{i}": jnp.ones(s, jnp.float32) for i, s in enumerate(shapes)}
    counted = muon_flops_per_step({**filters, "head": jnp.ones((256, 10))})
    assert counted == muon_flops_per_step(filters)
    # The stem by hand: a 108 x 32 matrix, m = 32, five iterations of 4m^2n + 2m^3.
    assert muon_flops_per_step({"stem": filters["conv0"]}) == 5 * (4 * 32**2 * 108 + 2 * 32**3)
    muon_only = optax.contrib.scale_by_muon(
        ns_steps=training.NS_STEPS,
        weight_dimension_numbers=lambda t: jax.tree.map(lambda _: training._FILTER_DIMS, t),
    )
    state = muon_only.init(filters)
    cost = jax.jit(lambda g, s: muon_only.update(g, s, filters)).lower(filters, state)
    analysis = cost.compile().cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    assert counted <= xla <= 1.03 * counted


def test_saved_run_config_holds_the_new_keys_only_when_set():
    """A model trained as before these keys existed (SGD, no lookahead, random flips) saves
    the config it saved then; any other setting is saved and read back."""
    assert not _SAVED_ONLY_IF_SET["lookahead"] and not _SAVED_ONLY_IF_SET["alternate_flip"]
    plain = tiny_run(4, optimizer="sgd", lookahead=False)
    assert not {"lookahead", "alternate_flip", "optimizer", "muon_lr", "muon_momentum"} & set(
        plain.to_dict()["train"]
    )
    levers = tiny_run(4, lookahead=True, alternate_flip=True)
    assert levers.to_dict()["train"]["lookahead"] is True
    muon = tiny_run(4, optimizer="muon", muon_lr=0.1)
    assert muon.to_dict()["train"]["optimizer"] == "muon"
    assert muon.to_dict()["train"]["muon_lr"] == 0.1
    for run in (plain, levers, muon, tiny_run(4)):
        assert RunConfig.from_dict(run.to_dict()) == run


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


def test_learns_with_muon(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    run = tiny_run(4, epochs=4, optimizer="muon", muon_lr=0.2)
    trained = train_and_evaluate(load_prepared(prepared), run, show_progress=False)
    assert trained.test_accuracy >= 0.9, trained.history
