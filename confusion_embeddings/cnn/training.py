"""Training the CNN: the train params, the jitted step, one epoch, and the whole run.

Reads and writes nothing itself (stages/train.py does, and cnn/resume.py keeps the resume
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

from confusion_embeddings import devices
from confusion_embeddings.cnn.conv import IMPLS, PRECISIONS
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN, ModelConfig
from confusion_embeddings.cnn.resume import HISTORY_KEYS, Resume
from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, above, at_least, in_range, int_list, one_of
from confusion_embeddings.data.prepared import Prepared, Split
from confusion_embeddings.data.selection import crossfit_folds

# numpy's default_rng refuses negative seeds and jax.random.key takes at most 64 bits.
SEED_RANGE = (0, 2**32 - 1)

SCHEMA = {
    # 14: the fewest that keep every classifier above 86% test accuracy (docs/recipe.md).
    "epochs": Param(int, 14, at_least(1)),
    "batch_size": Param(int, 512, at_least(1)),
    "lr": Param(float, 0.2, above(0)),  # peak learning rate, per mean loss over a batch
    "momentum": Param(float, 0.9, in_range(0.0, 0.999)),
    "nesterov": Param(bool, True),
    "weight_decay": Param(float, 5e-4, at_least(0.0)),  # conv and linear kernels only
    "warmup_fraction": Param(float, 0.2, in_range(0.0, 1.0)),
    # 0: smoothing pulls the wrong classes' logits together and erases the order of the
    # 2nd and 3rd guesses, which is what the method reads (docs/recipe.md).
    "label_smoothing": Param(float, 0.0, in_range(0.0, 0.999)),
    "translate": Param(int, 2, at_least(0)),
    "flip": Param(bool, True),
    "tta_flip": Param(bool, True),
    "tta_translate": Param(int, 1, at_least(0)),
    "eval_batch_size": Param(int, 1000, at_least(1)),
    "stem_patch": Param(int, 2, at_least(1)),
    "stem_width": Param(int, 32, at_least(1)),
    "widths": Param(list, [64, 128, 256], int_list(1, what="positive ints")),
    # 0: train on every training picture; K >= 2: leave out fold seed mod K (cross-fitting).
    "crossfit_folds": Param(int, 0, lambda v: None if v == 0 or v >= 2 else "0 or an int >= 2"),
    "bn_momentum": Param(float, 0.6, in_range(0.0, 0.999)),
    "logit_scale": Param(float, 1 / 9, above(0)),
    "conv_impl": Param(str, "auto", one_of(*IMPLS)),
    # bf16 where the CPU has it (f32 with a warning elsewhere): 1.8x the train step,
    # quality within the f32 classifiers' spread (docs/design/bf16.md).
    "precision": Param(str, "bf16", one_of(*PRECISIONS)),
    "cpu_devices": devices.CPU_DEVICES,
}


def check_geometry(image_hw: tuple[int, int], p: dict[str, Any]) -> None:
    """The stem's space-to-depth needs stem_patch to divide the picture; each block then
    halves the feature map (2x2 max-pool), so it must stay even down to the last block."""
    h, w = image_hw
    patch, blocks = p["stem_patch"], len(p["widths"])
    if h % patch or w % patch:
        raise PipelineError(
            f"params.yaml: 'train.stem_patch' = {patch} does not divide the {h}x{w} pictures; "
            "pick a divisor of both sides (or set prepare.image_size)"
        )
    need = 2**blocks
    if (h // patch) % need or (w // patch) % need:
        raise PipelineError(
            f"params.yaml: 'train.widths' = {p['widths']} has {blocks} blocks, each halving the "
            f"{h // patch}x{w // patch} map after the stem, so both sides must be divisible by "
            f"{need}; use fewer widths, a smaller train.stem_patch or a larger prepare.image_size"
        )


def check_batch_sizes(p: dict[str, Any], n_train: int) -> None:
    devices.check_batch_size(p["batch_size"], "train.batch_size")
    devices.check_batch_size(p["eval_batch_size"], "train.eval_batch_size")
    if n_train < p["batch_size"]:
        raise PipelineError(
            f"params.yaml: 'train.batch_size' = {p['batch_size']} exceeds the {n_train} "
            "training pictures; lower it"
        )


# --------------------------------------------------------------------------- the step


def augment(images: jax.Array, key: jax.Array, translate: int, flip: bool) -> jax.Array:
    """Random horizontal flip and translation by up to `translate` pixels (reflect-padded)."""
    x = images.astype(jnp.float32)
    k_flip, k_shift = jax.random.split(key)
    if flip:
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


def make_optimizer(p: dict[str, Any], steps: int) -> optax.GradientTransformation:
    """Nesterov SGD, linear warm-up over `warmup_fraction` of the steps, then linear decay."""
    warmup = max(1, int(p["warmup_fraction"] * steps))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, p["lr"], warmup),
            optax.linear_schedule(p["lr"], 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )
    return optax.chain(
        optax.add_decayed_weights(p["weight_decay"], mask=_kernels_only),
        optax.sgd(schedule, momentum=p["momentum"], nesterov=p["nesterov"]),
    )


def create_train_state(cfg: ModelConfig, p: dict[str, Any], seed: int, total_steps: int):
    """(graphdef, state, optimizer): the network initialised from `seed`; the state is a
    plain dict (params, rest = batch-norm statistics, opt, step, key) that serialises."""
    key = jax.random.key(seed)
    model = CNN(cfg, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(p, total_steps)
    state = {
        "params": params,
        "rest": rest,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        # Raw uint32 key data, so that the state serialises like any array.
        "key": jax.random.key_data(jax.random.fold_in(key, 1)),
    }
    return graphdef, state, tx


def make_train_step(graphdef, tx, norm: tuple[jax.Array, jax.Array], p: dict[str, Any]):
    """Return jitted `step(state, images_u8, labels) -> (state, loss_sum, correct)`."""
    mean, std = norm
    smoothing = p["label_smoothing"]

    def loss_fn(variables, images, labels, key):
        # Batch statistics are differentiated too (their gradient is zero and compiled
        # away): NNX refuses to update variables created at an outer trace level.
        model = nnx.merge(graphdef, *variables)
        x = (augment(images, key, p["translate"], p["flip"]) - mean) / std
        logits = model(x)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return losses.mean(), (new_rest, losses.sum(), correct)

    def step(state, images, labels):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        (grads, _), (rest, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(
            (state["params"], state["rest"]), images, labels, key
        )
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {**state, "params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}
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
):
    """One pass over `train` in `order` (full batches only); returns (state, mean loss,
    accuracy, seconds). Metrics stay on the device until the epoch ends."""
    steps = len(order) // batch_size
    host_rows = devices.local_slice(batch_size)
    loss_acc, correct_acc = jnp.zeros(()), jnp.zeros((), jnp.int32)
    t0 = time.perf_counter()
    for i in progress(range(steps), desc, unit="step", enabled=show_progress):
        # Sorted for faster mmap reads, then this host's rows: every host's rows sit where
        # one process would put them, so the run does not depend on the process count.
        idx = np.sort(order[i * batch_size : (i + 1) * batch_size])[host_rows]
        xb, yb = devices.shard_batch(mesh, np.asarray(train.images[idx]), train.labels[idx])
        state, loss_sum, correct = step(state, xb, yb)
        loss_acc, correct_acc = loss_acc + loss_sum, correct_acc + correct
    jax.block_until_ready(state)
    seen = steps * batch_size
    return state, float(loss_acc) / seen, int(correct_acc) / seen, time.perf_counter() - t0


def accuracy(infer, state, split: Split, batch_size: int, mesh) -> float:
    logits = devices.map_batches(
        lambda x: infer(state["params"], state["rest"], x), split.images, batch_size, mesh
    )
    return float((logits.argmax(-1) == split.labels).mean())


def holdout(p: dict[str, Any], seed: int) -> dict[str, int] | None:
    """The training fold the classifier of `seed` leaves out under cross-fitting, or None."""
    folds = p["crossfit_folds"]
    return {"folds": folds, "fold": seed % folds} if folds else None


def training_rows(labels: np.ndarray, left_out: dict[str, int] | None) -> np.ndarray:
    """Rows of the train split a classifier trains on: all, or all but its left-out fold."""
    if left_out is None:
        return np.arange(len(labels))
    return np.flatnonzero(crossfit_folds(labels, left_out["folds"]) != left_out["fold"])


def training_split(train: Split, left_out: dict[str, int] | None) -> Split:
    if left_out is None:
        return train
    rows = training_rows(train.labels, left_out)
    return Split(np.asarray(train.images[rows]), train.labels[rows])


def pixel_norm(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std measured on (a sample of) the training pictures."""
    sample = np.asarray(images[:: max(1, len(images) // 5000)], np.float32)
    return sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2)) + 1e-3


@dataclass
class Trained:
    """What `train_and_evaluate` hands back: the network and how training went."""

    graphdef: Any
    state: dict
    cfg: ModelConfig
    norm: tuple[np.ndarray, np.ndarray]
    history: list[dict[str, float]]
    test_accuracy: float  # with test-time augmentation, as predict runs the network
    train_seconds: float  # the epochs alone, summed over resumed runs


def train_and_evaluate(
    data: Prepared,
    p: dict[str, Any],
    seed: int,
    conv_impl: str,
    resume: Resume | None = None,
    on_epoch: Callable[[dict[str, float]], None] = lambda rec: None,
    show_progress: bool = True,
    precision: str = "f32",
) -> Trained:
    """Train on data's train split (less the fold `seed` leaves out under cross-fitting),
    scoring on its test split after every epoch.

    `conv_impl` and `precision` are resolved (cnn/conv.py). `resume` keeps a checkpoint
    after every epoch and continues from one; `on_epoch` gets each epoch's record (also the
    records of epochs restored from a checkpoint, in order).
    """
    train = training_split(data.splits["train"], holdout(p, seed))
    test = data.splits["test"]
    bs = p["batch_size"]
    check_batch_sizes(p, len(train.labels))
    check_geometry(data.image_hw, p)
    steps_per_epoch = len(train.labels) // bs
    cfg = ModelConfig.from_params(p, len(data.classes), conv_impl, precision)
    norm = pixel_norm(train.images)

    with devices.data_parallel() as mesh:  # the mesh the step's convolutions see
        graphdef, state, tx = create_train_state(cfg, p, seed, steps_per_epoch * p["epochs"])
        history: list[dict[str, float]] = []
        train_seconds = 0.0
        # Every process resumes, or none: the checkpoint folder must be one they all see.
        if resume is not None and devices.agreed(
            resume.exists(), f"the resume checkpoint {resume.path} exists"
        ):
            state, history, train_seconds = resume.load(state)
            print(f"resuming from {resume.path} after epoch {len(history)}")
        state = jax.device_put(state, devices.replicated(mesh))
        step = make_train_step(graphdef, tx, (jnp.asarray(norm[0]), jnp.asarray(norm[1])), p)
        # The per-epoch curve uses the plain network (one view, cheap); the final score the
        # test-time augmentation that predict applies too.
        infer_plain = make_inference_fn(graphdef, norm)
        infer_tta = make_inference_fn(
            graphdef, norm, tta_flip=p["tta_flip"], tta_translate=p["tta_translate"]
        )
        for rec in history:
            on_epoch(rec)
        for epoch in range(len(history), p["epochs"]):
            order = np.random.default_rng([seed, epoch]).permutation(len(train.labels))
            state, loss, acc, seconds = train_epoch(
                step,
                state,
                train,
                order,
                bs,
                mesh,
                f"epoch {epoch + 1}/{p['epochs']}",
                show_progress,
            )
            train_seconds += seconds
            test_acc = accuracy(infer_plain, state, test, p["eval_batch_size"], mesh)
            values = (epoch + 1, round(loss, 6), round(acc, 6), round(test_acc, 6))
            rec = dict(zip(HISTORY_KEYS, values, strict=True))
            history.append(rec)
            on_epoch(rec)
            print(
                f"epoch {epoch + 1}/{p['epochs']}: loss {loss:.4f} train acc {acc:.4f} "
                f"test acc {test_acc:.4f} ({steps_per_epoch * bs / seconds:.0f} img/s, "
                f"{seconds:.0f} s)",
                flush=True,
            )
            if resume is not None and epoch + 1 < p["epochs"] and devices.is_primary():
                resume.save(state, history, train_seconds)
        final_acc = accuracy(infer_tta, state, test, p["eval_batch_size"], mesh)
    return Trained(graphdef, state, cfg, norm, history, final_acc, train_seconds)
