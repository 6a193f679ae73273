"""Synthetic predictions files with a planted confusion structure, for benchmarks and tests.

A picture of class c gets logits = N(0, 1) noise + `true_bonus` on c + `confusion_strength`
on every other class of c's group, so a model "confuses" classes only within their group.
The result follows the predictions-file contract of confusion_embeddings/predictions.py.
benchmarks/engines.py measures on such files; tests/synthetic.py re-exports these names
beside the tests' own fixtures (tests/ is imported by nothing else).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def make_synthetic_predictions(
    n_per_class: int,
    classes: Sequence[str],
    groups: Mapping[str, Sequence[str]] | None,
    confusion_strength: float,
    seed: int,
    *,
    true_bonus: float = 2.0,
    test_fraction: float = 1 / 6,
) -> dict[str, np.ndarray]:
    """Return the arrays of a predictions file: labels, classes, probs, split, splits, groups.

    Pictures are listed class by class, as an image-folder dataset lists them; the last
    `test_fraction` of each class is the "test" split, the rest "train".
    """
    rng = np.random.default_rng(seed)
    n_classes = len(classes)
    index = {name: i for i, name in enumerate(classes)}
    group_of = np.full(n_classes, -1)
    for g, members in enumerate((groups or {}).values()):
        group_of[[index[m] for m in members]] = g

    labels = np.repeat(np.arange(n_classes), n_per_class)
    n = labels.size
    logits = rng.normal(0.0, 1.0, size=(n, n_classes)).astype(np.float32)
    logits[np.arange(n), labels] += true_bonus
    same = (group_of[labels][:, None] == group_of[None, :]) & (group_of[None, :] >= 0)
    same[np.arange(n), labels] = False
    logits += np.float32(confusion_strength) * same
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)

    n_test = int(round(n_per_class * test_fraction))
    within = np.tile(np.arange(n_per_class), n_classes)
    split = (within >= n_per_class - n_test).astype(np.int8)
    return {
        "labels": labels.astype(np.int64),
        "classes": np.array(list(classes), dtype=str),
        "probs": probs.astype(np.float32),
        "split": split,
        "splits": np.array(["train", "test"]),
        "groups": np.array(json.dumps({k: list(v) for k, v in (groups or {}).items()} or None)),
    }


def write_predictions(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Save arrays as a predictions .npz (np.savez, as a user's own script would)."""
    path = Path(path)
    np.savez(path, **arrays)
    return path


CIFAR10 = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_GROUPS = {
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
    "vehicles": ["airplane", "automobile", "ship", "truck"],
}
