"""Training the CNN: the train params, the jitted step, one epoch, and the whole run.

Reads and writes nothing itself (cnn/run.py does, and cnn/resume.py keeps the resume
checkpoint). Shaped like flax's examples: `create_train_state`, `make_train_step` (the only
jitted function, buffer-donating), `train_epoch`, `train_and_evaluate`.

One step does augmentation (flip, translate), forward, backward and the optax update;
shapes are static (the last partial batch of an epoch is dropped, the order changes every
epoch) so it compiles once. Batches are sharded over every device; parameters replicated.

Determinism: on CPU, XLA's reductions run in a fixed order and every random draw comes from
the seed (numpy for the epoch order, jax.random folded with the step for augmentation), so
two runs, or a resumed and an uninterrupted run, end with the same weights on one machine.
oneDNN and XLA pick kernels by instruction set, so another CPU model gives other last bits
(docs/reproducibility.md). On GPU some reductions are not bitwise deterministic either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from confusion_embeddings import devices, host
from confusion_embeddings.cnn.config import Holdout, RunConfig, TrainParams
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN, whitening_matrix
from confusion_embeddings.cnn.resume import HISTORY_KEYS, Resume
from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.prepared import Prepared, Split
from confusion_embeddings.data.selection import crossfit_folds


def check_geometry(image_hw: tuple[int, int], t: TrainParams) -> None:
    """The stem's space-to-depth needs stem_patch to divide the picture; each block then
    halves the feature map (2x2 max-pool), so it must stay even down to the last block."""
    h, w = image_hw
    patch, blocks = t.stem_patch, len(t.widths)
    if h % patch or w % patch:
        raise PipelineError(
            f"params.yaml: 'train.stem_patch' = {patch} does not divide the {h}x{w} pictures; "
            "pick a divisor of both sides (or set prepare.image_size)"
        )
    need = 2**blocks
    if (h // patch) % need or (w // patch) % need:
        raise PipelineError(
            f"params.yaml: 'train.widths' = {list(t.widths)} has {blocks} blocks, each halving the "
            f"{h // patch}x{w // patch} map after the stem, so both sides must be divisible by "
            f"{need}; use fewer widths, a smaller train.stem_patch or a larger prepare.image_size"
        )


def check_batch_sizes(t: TrainParams, n_train: int) -> None:
    devices.check_batch_size(t.batch_size, "train.batch_size")
    devices.check_batch_size(t.eval_batch_size, "train.eval_batch_size")
    if n_train < t.batch_size:
        raise PipelineError(
            f"params.yaml: 'train.batch_size' = {t.batch_size} exceeds the {n_train} "
            "training pictures; lower it"
        )


# --------------------------------------------------------------------------- the step


def augment(
    images: jax.Array,
    key: jax.Array,
    translate: int,
    flip: bool,
    flips: jax.Array | None = None,
) -> jax.Array:
    """Horizontal flip and translation by up to `translate` pixels (reflect-padded). The
    flip is random per picture, or where given the `flips` [N] bools (alternate_flip)."""
    x = images.astype(jnp.float32)
    k_flip, k_shift = jax.random.split(key)
    if flips is not None:
        x = jnp.where(flips[:, None, None, None], x[:, :, ::-1, :], x)
    elif flip:
        do = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(do, x[:, :, ::-1, :], x)
    if translate:
        # Each axis: pick one of the 2t+1 shifted windows per picture with `where`. Unlike a
        # vmapped dynamic_slice (a gather) this stays elementwise, so it fuses and it keeps
        # the batch sharding.
        t = translate
        n, h, w, _ = x.shape
        xp = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        shifts = jax.random.randint(k_shift, (2, n, 1, 1, 1), 0, 2 * t + 1)
        for axis, size, s in ((1, h, shifts[0]), (2, w, shifts[1])):
            out = jax.lax.slice_in_dim(xp, 0, size, axis=axis)
            for k in range(1, 2 * t + 1):
                out = jnp.where(s == k, jax.lax.slice_in_dim(xp, k, k + size, axis=axis), out)
            xp = out
        x = xp
    return x


def _kernels_only(params):
    # Decay only the conv/linear kernels: decaying batch-norm biases hurts short runs.
    return jax.tree.map(lambda a: a.ndim > 1, params)


def _biases_only(params):
    # The network's only 1-D parameters are the batch-norm biases (convs and head have none).
    return jax.tree.map(lambda a: a.ndim == 1, params)


def _warmup_then_decay(peak: float, warmup_fraction: float, steps: int) -> optax.Schedule:
    warmup = max(1, int(warmup_fraction * steps))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.linear_schedule(peak, 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )


def _sgd(t: TrainParams, steps: int) -> optax.GradientTransformation:
    scale_biases = [optax.masked(optax.scale(t.bias_lr_scale), _biases_only)]
    return optax.chain(
        optax.add_decayed_weights(t.weight_decay, mask=_kernels_only),
        *(scale_biases if t.bias_lr_scale != 1.0 else []),
        optax.sgd(
            _warmup_then_decay(t.lr, t.warmup_fraction, steps),
            momentum=t.momentum,
            nesterov=t.nesterov,
        ),
    )


# A conv kernel is [kh, kw, cin, cout]: Muon orthogonalises it as a (kh*kw*cin, cout) matrix.
_FILTER_DIMS = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
# Newton-Schulz iterations of each orthogonalisation (optax's default, named here so that
# the optimizer and muon_flops_per_step count the same ones).
NS_STEPS = 5


def _is_filter(a) -> bool:
    """The parameters Muon takes under `optimizer: muon`: the convolution kernels."""
    return a.ndim == 4


def muon_flops_per_step(params) -> int:
    """FLOPs of one Muon step's orthogonalisation, over the filter banks in `params` (any
    tree of arrays or shapes-with-ndim). Each kernel is an m x n matrix, m the smaller side
    (optax transposes it so), and one Newton-Schulz iteration costs 4m^2n + 2m^3: X X^T,
    its square, and the product with X. The network's own FLOPs (count_flops) leave this out."""
    flops = 0
    for a in jax.tree.leaves(params):
        if _is_filter(a):
            rows, cols = int(np.prod(a.shape[:3])), int(a.shape[3])
            m, n = min(rows, cols), max(rows, cols)
            flops += NS_STEPS * (4 * m * m * n + 2 * m**3)
    return flops


def _fixed_norm() -> optax.GradientTransformation:
    """airbench's Muon rescales each filter bank to Frobenius norm sqrt(cout) before its
    step: batch norm follows every convolution, so the scale is free, and fixing it keeps
    the orthogonalised step's size relative to the weights the same all run long."""

    def update(updates, state, params):
        def one(u, p):
            target = jnp.sqrt(jnp.float32(p.shape[-1]))
            return u + p * (target / (jnp.linalg.norm(p) + 1e-12) - 1.0)

        return jax.tree.map(one, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _muon_filters(t: TrainParams, steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.contrib.scale_by_muon(
            ns_steps=NS_STEPS,
            beta=t.muon_momentum,
            nesterov=t.nesterov,
            weight_dimension_numbers=lambda tree: jax.tree.map(lambda _: _FILTER_DIMS, tree),
        ),
        optax.scale_by_learning_rate(_warmup_then_decay(t.muon_lr, t.warmup_fraction, steps)),
        _fixed_norm(),
    )


def make_optimizer(t: TrainParams, steps: int) -> optax.GradientTransformation:
    """Nesterov SGD, linear warm-up over `warmup_fraction` of the steps, then linear decay;
    batch-norm biases at `bias_lr_scale` times the learning rate (their gradient scaled
    before the momentum, which is the same thing for SGD). Under `optimizer: muon` the
    convolution filters (the 4-D parameters) take airbench's Muon instead, no weight
    decay (their norm is fixed), and the head and biases keep the SGD."""
    if t.optimizer == "sgd":
        return _sgd(t, steps)

    def labels(params):
        return jax.tree.map(lambda a: "muon" if _is_filter(a) else "sgd", params)

    return optax.multi_transform({"muon": _muon_filters(t, steps), "sgd": _sgd(t, steps)}, labels)


def create_train_state(run: RunConfig, total_steps: int, whitening: np.ndarray | None = None):
    """(graphdef, state, optimizer): the network initialised from the run's seed; the state
    is a plain dict (params, rest = batch-norm statistics and the frozen whitening, opt,
    step, key; under train.lookahead also slow, the averaged copy of params and rest) that
    serialises. `whitening` sets the stem's patch whitening (train.whiten: cnn/network.py's
    whitening_matrix of the training pictures)."""
    key = jax.random.key(run.seed)
    model = CNN(run.model, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    if whitening is not None:
        model.whitening.set_value(jnp.asarray(whitening, jnp.float32))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(run.train, total_steps)
    state = {
        "params": params,
        "rest": rest,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        # Raw uint32 key data, so that the state serialises like any array.
        "key": jax.random.key_data(jax.random.fold_in(key, 1)),
    }
    if run.train.lookahead:
        state["slow"] = jax.tree.map(jnp.copy, (params, rest))
    return graphdef, state, tx


# airbench's lookahead: every LOOKAHEAD_EVERY steps the slow copy moves toward the weights
# by 1 - decay and the weights jump back to it. decay rises as (step / total)^3 up to
# LOOKAHEAD_DECAY: plain SGD early, an average of the last steps' weights at the end.
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY


def _lerp_floats(slow, fast, weight):
    """slow + weight * (fast - slow) on float leaves; integer leaves keep `fast`."""

    def one(s, f):
        return s + weight * (f - s) if jnp.issubdtype(f.dtype, jnp.floating) else f

    return jax.tree.map(one, slow, fast)


def lookahead_sync(state: dict, total_steps: int) -> dict:
    """The lookahead update after a step (a no-op unless the step count is a multiple of
    LOOKAHEAD_EVERY)."""
    k = state["step"]
    due = k % LOOKAHEAD_EVERY == 0
    decay = LOOKAHEAD_DECAY * (k.astype(jnp.float32) / total_steps) ** 3
    fast = (state["params"], state["rest"])
    moved = _lerp_floats(state["slow"], fast, 1.0 - decay)
    slow = jax.tree.map(lambda m, s: jnp.where(due, m, s), moved, state["slow"])
    params, rest = jax.tree.map(lambda s, f: jnp.where(due, s, f), slow, fast)
    return {**state, "params": params, "rest": rest, "slow": slow}


def lookahead_finish(state: dict) -> dict:
    """The weights the run keeps under lookahead: the slow copy (airbench's last update)."""
    params, rest = state["slow"]
    return {**state, "params": params, "rest": rest}


def make_train_step(
    graphdef,
    tx,
    norm: tuple[jax.Array, jax.Array],
    t: TrainParams,
    total_steps: int | None = None,
):
    """Return jitted `step(state, images_u8, labels, flips=None) -> (state, loss_sum,
    correct)`; `flips` [N] bools replace the random flip (train.alternate_flip).
    `total_steps` (the run's) sets the lookahead schedule; needed under train.lookahead."""
    if t.lookahead and not total_steps:
        raise ValueError("train.lookahead needs the run's total_steps")
    mean, std = norm
    smoothing = t.label_smoothing

    def loss_fn(variables, images, labels, key, flips):
        # Batch statistics are differentiated too (their gradient is zero and compiled
        # away): NNX refuses to update variables created at an outer trace level.
        model = nnx.merge(graphdef, *variables)
        x = (augment(images, key, t.translate, t.flip, flips) - mean) / std
        logits = model(x)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return losses.mean(), (new_rest, losses.sum(), correct)

    def step(state, images, labels, flips=None):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        (grads, _), (rest, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(
            (state["params"], state["rest"]), images, labels, key, flips
        )
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {**state, "params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}
        if t.lookahead:
            new = lookahead_sync(new, total_steps)
        return new, loss_sum, correct

    return jax.jit(step, donate_argnums=(0,))


# --------------------------------------------------------------------------- epochs


def train_epoch(
    step,
    state,
    train: Split,
    order: np.ndarray,
    batch_size: int,
    mesh,
    desc: str = "",
    show_progress: bool = True,
    flips: np.ndarray | None = None,
):
    """One pass over `train` in `order` (full batches only); returns (state, mean loss,
    accuracy, seconds). `flips` [N] bools, where given, say which pictures of `train` the
    step mirrors this epoch. Metrics stay on the device until the epoch ends."""
    steps = len(order) // batch_size
    host_rows = devices.local_slice(batch_size)
    loss_acc, correct_acc = jnp.zeros(()), jnp.zeros((), jnp.int32)
    t0 = time.perf_counter()
    for i in progress(range(steps), desc, unit="step", enabled=show_progress):
        # Sorted for faster mmap reads, then this host's rows: every host's rows sit where
        # one process would put them, so the run does not depend on the process count.
        idx = np.sort(order[i * batch_size : (i + 1) * batch_size])[host_rows]
        batch = (np.asarray(train.images[idx]), train.labels[idx])
        batch += () if flips is None else (flips[idx],)
        state, loss_sum, correct = step(state, *devices.shard_batch(mesh, *batch))
        loss_acc, correct_acc = loss_acc + loss_sum, correct_acc + correct
    jax.block_until_ready(state)
    seen = steps * batch_size
    return state, float(loss_acc) / seen, int(correct_acc) / seen, time.perf_counter() - t0


def accuracy(infer, state, split: Split, batch_size: int, mesh) -> float:
    logits = devices.map_batches(
        lambda x: infer(state["params"], state["rest"], x), split.images, batch_size, mesh
    )
    return float((logits.argmax(-1) == split.labels).mean())


def alternate_flips(seed: int, n: int) -> np.ndarray:
    """airbench's alternating flip: each of the n training pictures' flip in even epochs,
    drawn once from the seed; odd epochs mirror the others, so every picture is seen both
    ways in any two epochs running."""
    return np.random.default_rng([seed, 0x666C6970]).random(n) < 0.5  # 0x666C6970: "flip"


def training_rows(labels: np.ndarray, holdout: Holdout | None) -> np.ndarray:
    """Rows of the train split a classifier trains on: all, or all but its held-out fold."""
    if holdout is None:
        return np.arange(len(labels))
    return np.flatnonzero(crossfit_folds(labels, holdout.folds) != holdout.fold)


def training_split(train: Split, holdout: Holdout | None) -> Split:
    if holdout is None:
        return train
    rows = training_rows(train.labels, holdout)
    return Split(np.asarray(train.images[rows]), train.labels[rows])


def _norm_sample(images: np.ndarray) -> np.ndarray:
    return np.asarray(images[:: max(1, len(images) // 5000)], np.float32)


def pixel_norm(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std measured on (a sample of) the training pictures."""
    sample = _norm_sample(images)
    return sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2)) + 1e-3


def patch_whitening(images: np.ndarray, norm, t: TrainParams) -> np.ndarray | None:
    """The stem's frozen whitening, from the same sample of training pictures as the
    pixel norm, normalised as the network sees them; None unless train.whiten."""
    if not t.whiten:
        return None
    sample = (_norm_sample(images) - norm[0]) / norm[1]
    return whitening_matrix(sample, t.stem_patch, t.whiten_eps)


@dataclass
class Trained:
    """What `train_and_evaluate` hands back: the network and how training went."""

    graphdef: Any
    state: dict
    norm: tuple[np.ndarray, np.ndarray]
    history: list[dict[str, float]]
    test_accuracy: float  # with test-time augmentation, as predict runs the network
    test_accuracy_one_view: float  # the same network without it
    train_seconds: float  # the epochs alone, summed over resumed runs
    images_trained: int  # pictures through the train step, over every epoch


def train_and_evaluate(
    data: Prepared,
    run: RunConfig,
    resume: Resume | None = None,
    on_epoch: Callable[[dict[str, float]], None] = lambda rec: None,
    show_progress: bool = True,
) -> Trained:
    """Train the run's network on data's train split (less its held-out fold under
    cross-fitting), scoring on its test split after every epoch.

    `resume` keeps a checkpoint after every epoch and continues from one; `on_epoch` gets
    each epoch's record (also the records of epochs restored from a checkpoint, in order).
    """
    t = run.train
    train = training_split(data.splits["train"], run.holdout)
    check_batch_sizes(t, len(train.labels))
    check_geometry(data.image_hw, t)
    steps_per_epoch = len(train.labels) // t.batch_size
    total_steps = training_steps(t.epochs, steps_per_epoch)
    epochs = -(-total_steps // steps_per_epoch)  # the last one a part of an epoch, if any
    norm = pixel_norm(train.images)

    with devices.data_parallel() as mesh:  # the mesh the step's convolutions see
        whitening = patch_whitening(train.images, norm, t)
        graphdef, state, tx = create_train_state(run, total_steps, whitening)
        history: list[dict[str, float]] = []
        train_seconds = 0.0
        # Every process resumes, or none: the checkpoint folder must be one they all see.
        if resume is not None and host.agreed(
            resume.exists(), f"the resume checkpoint {resume.path} exists"
        ):
            state, history, train_seconds = resume.load(state)
            print(f"resuming from {resume.path} after epoch {len(history)}")
        state = jax.device_put(state, devices.replicated(mesh))
        step = make_train_step(
            graphdef, tx, (jnp.asarray(norm[0]), jnp.asarray(norm[1])), t, total_steps
        )
        first_flips = alternate_flips(run.seed, len(train.labels)) if t.alternate_flip else None
        # The per-epoch curve uses the plain network (one view, cheap); the final score the
        # test-time augmentation that predict applies too.
        infer_plain = make_inference_fn(graphdef, norm)
        infer_tta = make_inference_fn(
            graphdef, norm, tta_flip=t.tta_flip, tta_translate=t.tta_translate
        )
        for rec in history:
            on_epoch(rec)
        for epoch in range(len(history), epochs):
            order = np.random.default_rng([run.seed, epoch]).permutation(len(train.labels))
            steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            order = order[: steps * t.batch_size]  # all of it but in a fractional last epoch
            desc = f"epoch {epoch + 1}/{epochs}"
            flips = None if first_flips is None else first_flips ^ bool(epoch % 2)
            state, loss, acc, seconds = train_epoch(
                step, state, train, order, t.batch_size, mesh, desc, show_progress, flips
            )
            train_seconds += seconds
            test_acc = accuracy(infer_plain, state, data.splits["test"], t.eval_batch_size, mesh)
            history.append(_epoch_record(epoch + 1, loss, acc, test_acc))
            print(
                f"{desc}: loss {loss:.4f} train acc {acc:.4f} test acc {test_acc:.4f} "
                f"({steps * t.batch_size / seconds:.0f} img/s, {seconds:.0f} s)",
                flush=True,
            )
            if resume is not None and epoch + 1 < epochs and host.is_primary():
                resume.save(state, history, train_seconds)
            on_epoch(history[-1])  # after the save: a failing logger loses no epoch
        one_view = history[-1]["test/accuracy"]
        if t.lookahead:
            # The model keeps the slow copy, not the weights the last epoch's curve scored.
            state = lookahead_finish(state)
            one_view = accuracy(infer_plain, state, data.splits["test"], t.eval_batch_size, mesh)
        final_acc = accuracy(infer_tta, state, data.splits["test"], t.eval_batch_size, mesh)
    images = total_steps * t.batch_size
    return Trained(
        graphdef, state, norm, history, final_acc, round(one_view, 6), train_seconds, images
    )


def training_steps(epochs: float, steps_per_epoch: int) -> int:
    """The train steps of `epochs` epochs of `steps_per_epoch` full batches each. A fractional
    count (airbench's 9.9) ends with the first batches of one more epoch's order: the
    learning-rate schedule spans them all, so the run is a shorter schedule, not a cut one."""
    return max(1, round(epochs * steps_per_epoch))


def _epoch_record(epoch: int, loss: float, acc: float, test_acc: float) -> dict[str, float]:
    values = (epoch, round(loss, 6), round(acc, 6), round(test_acc, 6))
    return dict(zip(HISTORY_KEYS, values, strict=True))
