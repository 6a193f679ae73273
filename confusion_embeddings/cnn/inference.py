"""Running a trained network over pictures: the jitted inference function and predict's core.

Reads and writes nothing itself; cnn/run.py writes what `predict_splits` returns.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from confusion_embeddings import devices
from confusion_embeddings.cnn.checkpoint import Model
from confusion_embeddings.data.prepared import Prepared, Split
from confusion_embeddings.data.selection import crossfit_folds


def make_inference_fn(graphdef, norm, tta_flip: bool = False, tta_translate: int = 0):
    """Jitted `infer(params, rest, images_u8) -> logits` in evaluation mode.

    Test-time augmentation, valid because training flips and shifts the pictures:
    `tta_flip` averages the logits of a picture and its mirror image; `tta_translate` = t
    adds the picture shifted by t pixels up-left and down-right (reflect-padded, as in
    training), weighted 1/2 (original) + 1/4 + 1/4, airbench's scheme. Every view is
    flipped too when `tta_flip` is on: 6 passes of the network instead of 1.
    """
    mean, std = (jnp.asarray(a, jnp.float32) for a in norm)

    def infer(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        x = (images.astype(jnp.float32) - mean) / std

        def views(v):
            logits = model(v)
            return 0.5 * (logits + model(v[:, :, ::-1, :])) if tta_flip else logits

        logits = views(x)
        if tta_translate:
            t, (h, w) = tta_translate, x.shape[1:3]
            xp = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
            shifted = views(xp[:, :h, :w]) + views(xp[:, 2 * t :, 2 * t :])
            logits = 0.5 * logits + 0.25 * shifted
        return logits

    return jax.jit(infer)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_splits(
    data: Prepared,
    model: Model,
    known: list[int],
    splits: list[str],
    batch_size: int,
    show_progress: bool = True,
    scores: str = "logits",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run `model` over `splits`; return the predictions-file arrays (predictions.py's
    contract) and a summary (pictures, top-1 accuracy per split). `known`: the indices of
    data's classes the model's outputs are, in order (data/selection.py's known_classes).
    `scores` (predict.scores): "logits", the network's outputs as they are, one column per
    known class; or "probs", every class's column, an unseen class's 0.

    A model trained under cross-fitting predicts only the training pictures it never saw
    (its RunConfig's `holdout`); the other splits whole. A model trained without some
    classes (train.unseen) scores their pictures too; its file names them in `unseen`.
    """
    devices.check_batch_size(batch_size, "predict.batch_size")
    t, holdout = model.run.train, model.run.holdout
    known = np.asarray(known)
    with devices.data_parallel() as mesh:  # the mesh the network's convolutions see
        params, rest = jax.device_put((model.params, model.rest), devices.replicated(mesh))
        infer = make_inference_fn(
            model.graphdef, model.norm, tta_flip=t.tta_flip, tta_translate=t.tta_translate
        )
        labels, outputs, split_ids, summary = [], [], [], {}
        for i, name in enumerate(splits):
            split = data.splits[name]
            if name == "train" and holdout is not None:
                rows = np.flatnonzero(crossfit_folds(split.labels, holdout.folds) == holdout.fold)
                split = Split(np.asarray(split.images[rows]), split.labels[rows])
            logits = devices.map_batches(
                lambda x: infer(params, rest, x),
                split.images,
                batch_size,
                mesh,
                show_progress,
                desc=f"predict {name}",
            )
            summary[name] = _summary(logits, split.labels, known)
            if scores == "probs":
                logits = _all_classes(softmax(logits), known, len(data.classes))
            outputs.append(logits)
            labels.append(split.labels)
            split_ids.append(np.full(len(split.labels), i, np.int8))
    arrays = {
        "labels": np.concatenate(labels).astype(np.int32),
        "classes": np.array(data.classes),
        scores: np.concatenate(outputs).astype(np.float32),
        "split": np.concatenate(split_ids),
        "splits": np.array(splits),
        "groups": np.array(json.dumps(data.groups)),
    }
    if t.unseen:
        arrays["unseen"] = np.array(t.unseen)
    return arrays, summary


def _all_classes(probs: np.ndarray, known: np.ndarray, n_classes: int) -> np.ndarray:
    """[N, C] probabilities from the network's [N, len(known)]: an unseen class's column
    is 0 (the classifier cannot name a class it never saw)."""
    if len(known) == n_classes:
        return probs
    out = np.zeros((len(probs), n_classes), probs.dtype)
    out[:, known] = probs
    return out


def _summary(logits: np.ndarray, labels: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    """Pictures, and top-1 accuracy over the pictures of the classes it was trained on."""
    on_known = np.isin(labels, known)
    hits = known[logits.argmax(1)] == labels
    out = {"pictures": len(labels), "accuracy": round(float(hits[on_known].mean()), 6)}
    if not on_known.all():
        out["unseen_pictures"] = int((~on_known).sum())
    return out
