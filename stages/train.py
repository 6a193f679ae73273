"""Stage `train`: fit the CNN on the prepared training split.

Reads:  data/prepared/ (see stages/dataset.py), the `train:` section of params.yaml.
Writes: models/cnn/ (`model.msgpack`: Flax state as msgpack; `config.json`: the network
        shape and the pixel normalisation), metrics/train.json, and per-epoch curves under
        reports/train/ (dvclive; drawn by `dvc plots show`).
Keeps:  .cache/train/<fingerprint>.msgpack, a checkpoint after every epoch, so that a killed
        run continues from its last completed epoch; removed when training ends.

One jitted, buffer-donating step does augmentation (flip, translate), forward, backward
and the optax update; shapes are static (the last partial batch of an epoch is dropped,
the permutation changes every epoch) so it compiles once. Batches are sharded over every
device JAX sees; parameters are replicated.

Determinism: on CPU, XLA's reductions run in a fixed order and every random draw comes from
`seed` (numpy for the epoch order, jax.random folded with the step for augmentation), so two
runs, or a resumed and an uninterrupted run, end with the same weights. On GPU some
reductions (scatter-add, cuDNN convolutions picked by autotuning) are not bitwise
deterministic; results then agree only up to float noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from tqdm import tqdm

from stages import parallel
from stages.common import (
    Param,
    PipelineError,
    at_least,
    atomic_dir,
    atomic_file,
    in_range,
    load_params,
    one_of,
    run_main,
    write_json,
)
from stages.dataset import load_prepared
from stages.model import CNN, ModelConfig, count_flops, make_inference_fn, save_model

SCHEMA = {
    # numpy's default_rng refuses negative seeds and jax.random.key takes at most 64 bits.
    "seed": Param(int, 0, in_range(0, 2**32 - 1)),
    "epochs": Param(int, 10, at_least(1)),
    "batch_size": Param(int, 512, at_least(1)),
    "lr": Param(float, 0.2, lambda v: None if v > 0 else "a number > 0"),
    "momentum": Param(float, 0.9, in_range(0.0, 0.999)),
    "nesterov": Param(bool, True),
    "weight_decay": Param(float, 5e-4, at_least(0.0)),
    "warmup_fraction": Param(float, 0.2, in_range(0.0, 1.0)),
    "label_smoothing": Param(float, 0.2, in_range(0.0, 0.999)),
    "translate": Param(int, 2, at_least(0)),
    "flip": Param(bool, True),
    "tta_flip": Param(bool, True),
    "tta_translate": Param(int, 1, at_least(0)),
    "eval_batch_size": Param(int, 1000, at_least(1)),
    "stem_patch": Param(int, 2, at_least(1)),
    "stem_width": Param(int, 32, at_least(1)),
    "widths": Param(list, [64, 128, 256], lambda v: None if v and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v
    ) else "a non-empty list of positive ints"),
    "conv_impl": Param(str, "onednn", one_of("onednn", "matmul", "xla")),
    "bn_momentum": Param(float, 0.6, in_range(0.0, 0.999)),
    "cpu_devices": parallel.CPU_DEVICES,
}


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


def make_optimizer(p: dict[str, Any], steps: int) -> optax.GradientTransformation:
    warmup = max(1, int(p["warmup_fraction"] * steps))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, p["lr"], warmup),
            optax.linear_schedule(p["lr"], 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )
    # Decay only the conv/linear kernels: decaying batch-norm biases hurts short runs.
    decay_mask = lambda params: jax.tree.map(lambda a: a.ndim > 1, params)  # noqa: E731
    return optax.chain(
        optax.add_decayed_weights(p["weight_decay"], mask=decay_mask),
        optax.sgd(schedule, momentum=p["momentum"], nesterov=p["nesterov"]),
    )


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
        # The key is kept as raw uint32 data so that the state serialises like any array.
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        (grads, _), (rest, loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(
            (state["params"], state["rest"]), images, labels, key
        )
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {**state, "params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}
        return new, loss_sum, correct

    return jax.jit(step, donate_argnums=(0,))


# --------------------------------------------------------------------------- logging


def _open_live(live_dir: Path):
    """dvclive's logger for the per-epoch curves, with a clear error where it cannot start."""
    from dvclive import Live  # imported here: it is slow to import and only needed here
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)
    except SCMError as e:  # dvclive asks git for the current commit, even with no commit
        raise PipelineError(
            f"dvclive could not read the git repository ({e}); commit once "
            "(`git add -A && git commit -m init`) and rerun `dvc repro`") from e


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(p: dict[str, Any], prepared_dir: Path) -> str:
    """Names the resume checkpoint: params, data, device count and the training code, so a
    checkpoint is only resumed by the run that would have written it."""
    h = hashlib.sha256(json.dumps(p, sort_keys=True).encode())
    for module in ("train", "model", "dataset", "parallel", "common"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    for name in sorted(prepared_dir.glob("*")):
        if name.suffix == ".json" or name.name.endswith("_labels.npy"):
            h.update(name.name.encode() + name.read_bytes())
        else:
            h.update(f"{name.name}:{name.stat().st_size}".encode())
    h.update(f"{jax.device_count()}".encode())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, state, history, train_seconds: float) -> None:
    """Leaves of the train state in flattening order; the fingerprint in the file name
    guarantees that the reader builds the same tree structure."""
    leaves = {str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves(state))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(
            {"leaves": leaves, "history": history, "train_seconds": train_seconds}))


def _load_checkpoint(path: Path, template):
    saved = serialization.msgpack_restore(path.read_bytes())
    leaves = [saved["leaves"][str(i)] for i in range(len(saved["leaves"]))]
    state = jax.tree.unflatten(jax.tree.structure(template), leaves)
    history = saved["history"]
    if isinstance(history, dict):  # msgpack_restore turns lists into {"0": ...} dicts
        history = [history[str(i)] for i in range(len(history))]
    # msgpack stores dict keys sorted; put each record back in the order it was made in, the
    # order dvclive writes reports/train/metrics.json in when the epochs are replayed.
    order = ("epoch", "train/loss", "train/accuracy", "test/accuracy")
    return state, [{k: h[k] for k in order} for h in history], float(saved["train_seconds"])


# --------------------------------------------------------------------------- the stage


def _check_geometry(image_hw: tuple[int, int], p: dict[str, Any]) -> None:
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


def train(
    prepared_dir: str | Path,
    model_dir: str | Path,
    metrics_file: str | Path,
    live_dir: str | Path,
    p: dict[str, Any],
    resume_dir: str | Path = ".cache/train",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the CNN; write model, metrics and curves; return the metrics."""
    t_stage = time.perf_counter()
    parallel.init_distributed()
    parallel.enable_compilation_cache()
    prepared_dir, resume_dir = Path(prepared_dir), Path(resume_dir)
    data = load_prepared(prepared_dir, ["train", "test"])
    train_x, train_y = data.splits["train"].images, data.splits["train"].labels
    test = data.splits["test"]
    num_classes = len(data.classes)
    bs = p["batch_size"]
    parallel.check_batch_size(bs, "train.batch_size")
    parallel.check_batch_size(p["eval_batch_size"], "train.eval_batch_size")
    if len(train_x) < bs:
        raise PipelineError(
            f"params.yaml: 'train.batch_size' = {bs} exceeds the {len(train_x)} training "
            "pictures; lower it"
        )
    steps_per_epoch = len(train_x) // bs
    total_steps = steps_per_epoch * p["epochs"]
    _check_geometry(data.image_hw, p)

    cfg = ModelConfig(
        num_classes=num_classes,
        stem_patch=p["stem_patch"],
        stem_width=p["stem_width"],
        widths=tuple(p["widths"]),
        conv_impl=p["conv_impl"],
        bn_momentum=p["bn_momentum"],
    )
    # Per-channel normalisation measured on the training pictures, saved with the model.
    sample = np.asarray(train_x[:: max(1, len(train_x) // 5000)], np.float32)
    norm = (sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2)) + 1e-3)

    with parallel.data_parallel() as mesh:  # the mesh the step's convolutions see
        repl = parallel.replicated(mesh)
        key = jax.random.key(p["seed"])
        model = CNN(cfg, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = make_optimizer(p, total_steps)
        state = {
            "params": params,
            "rest": rest,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "key": jax.random.key_data(jax.random.fold_in(key, 1)),
        }

        fingerprint = _fingerprint(p, prepared_dir)
        ckpt = resume_dir / f"{fingerprint}.msgpack"
        history: list[dict[str, float]] = []
        train_seconds = 0.0
        if ckpt.exists():
            state, history, train_seconds = _load_checkpoint(ckpt, state)
            print(f"resuming from {ckpt} after epoch {len(history)}")
        state = jax.device_put(state, repl)
        step = make_train_step(graphdef, tx, (jnp.asarray(norm[0]), jnp.asarray(norm[1])), p)

        # The per-epoch curve uses the plain network (one view, cheap); the final score uses the
        # test-time augmentation that `predict` applies too (see make_inference_fn).
        infer_plain = make_inference_fn(graphdef, norm)
        infer_tta = make_inference_fn(graphdef, norm, tta_flip=p["tta_flip"],
                                      tta_translate=p["tta_translate"])

        def test_accuracy(infer) -> float:
            logits = parallel.map_batches(lambda x: infer(state["params"], state["rest"], x),
                                          test.images, p["eval_batch_size"], mesh)
            return float((logits.argmax(-1) == test.labels).mean())

        live = _open_live(live_dir)
        for h in history:  # replay finished epochs: DVC removed the old curves before rerunning
            for k, v in h.items():
                if k != "epoch":
                    live.log_metric(k, v)
            live.next_step()

        host_rows = parallel.local_slice(bs)
        for epoch in range(len(history), p["epochs"]):
            order = np.random.default_rng([p["seed"], epoch]).permutation(len(train_x))
            loss_acc = jnp.zeros(()); correct_acc = jnp.zeros((), jnp.int32)  # noqa: E702
            t0 = time.perf_counter()
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{p['epochs']}",
                       disable=not progress, unit="step", leave=False)
            for i in bar:
                idx = np.sort(order[i * bs : (i + 1) * bs][host_rows])  # sorted: faster mmap reads
                xb, yb = parallel.shard_batch(mesh, np.asarray(train_x[idx]), train_y[idx])
                state, loss_sum, correct = step(state, xb, yb)
                loss_acc, correct_acc = loss_acc + loss_sum, correct_acc + correct
                if i % 10 == 9:
                    seen = (i + 1) * bs
                    bar.set_postfix(loss=f"{float(loss_acc) / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            jax.block_until_ready(state)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            seen = steps_per_epoch * bs
            test_acc = test_accuracy(infer_plain)
            rec = {
                "epoch": epoch + 1,
                "train/loss": round(float(loss_acc) / seen, 6),
                "train/accuracy": round(int(correct_acc) / seen, 6),
                "test/accuracy": round(test_acc, 6),
            }
            history.append(rec)
            for k, v in rec.items():
                if k != "epoch":
                    live.log_metric(k, v)
            live.next_step()
            print(f"epoch {epoch + 1}/{p['epochs']}: loss {rec['train/loss']:.4f} "
                  f"train acc {rec['train/accuracy']:.4f} test acc {test_acc:.4f} "
                  f"({seen / epoch_seconds:.0f} img/s, {epoch_seconds:.0f} s)", flush=True)
            if epoch + 1 < p["epochs"]:
                _save_checkpoint(ckpt, state, history, train_seconds)
        live.end()
        final_acc = test_accuracy(infer_tta)
        print(f"test accuracy with test-time augmentation: {final_acc:.4f}", flush=True)

        save_model(Path(model_dir), cfg, norm, state["params"], state["rest"])
        metrics = {
            "test_accuracy": round(final_acc, 6),
            "test_accuracy_no_tta": history[-1]["test/accuracy"],
            "train_accuracy": history[-1]["train/accuracy"],
            "train_loss": history[-1]["train/loss"],
            "epochs": p["epochs"],
            "tta_flip": p["tta_flip"],
            "tta_translate": p["tta_translate"],
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - t_stage, 1),
            "images_per_second": round(steps_per_epoch * bs * p["epochs"] / train_seconds, 1),
            "gflops_per_image_train": round(3 * count_flops(cfg, data.image_hw) / 1e9, 4),
            "backend": jax.default_backend(),
            "device_count": jax.device_count(),
        }
        write_json(metrics_file, metrics)
        ckpt.unlink(missing_ok=True)
        return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--live", required=True, help="dvclive folder for per-epoch curves")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = load_params("train", SCHEMA, args.params)
    parallel.prepare_host(p["cpu_devices"], [p["batch_size"], p["eval_batch_size"]],
                          p["conv_impl"])
    m = train(args.prepared, args.model, args.metrics, args.live, p)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    run_main(main)
