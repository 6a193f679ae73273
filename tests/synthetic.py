"""The tests' synthetic predictions: benchmarks/synthetic.py's generator (re-exported here,
so tests import every fixture from one place) and the small planted structures below.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from confusion_embeddings.pairs import Pairs

from benchmarks.synthetic import (  # noqa: F401 (re-exported for the tests)
    CIFAR10,
    CIFAR10_GROUPS,
    make_synthetic_predictions,
    write_predictions,
)

# Six classes: c0~c1 and c2~c3 are confused a lot; c4, c5 with nothing in particular.
PLANTED_CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5"]
PLANTED_GROUPS = {"g01": ["c0", "c1"], "g23": ["c2", "c3"]}


def planted_pairs(folder: Path, n_per_class: int):
    """Top-2 pairs of synthetic predictions with the planted confusions above."""
    from confusion_embeddings.pairs import build_pairs
    from confusion_embeddings.predictions import load_predictions

    path = Path(folder) / "pred.npz"
    write_predictions(
        path,
        make_synthetic_predictions(
            n_per_class, PLANTED_CLASSES, PLANTED_GROUPS, confusion_strength=2.0, seed=0
        ),
    )
    return build_pairs(load_predictions(path), top_k=2, block_size=4096)


# Eight classes for the resampling and compare tests (test_uncertainty, test_compare).
LINKED_CLASSES = [f"c{i}" for i in range(8)]


def linked_predictions(
    links: Mapping[tuple[int, int], float], n_per_class: int, seed: int, bonus: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """labels [N] and probs [N, 8] over LINKED_CLASSES: logits N(0, 1) noise, `bonus` on the
    true class, and links[(a, b)] added between a and b both ways (a's pictures lean to b)."""
    c = len(LINKED_CLASSES)
    strength = np.zeros((c, c))
    for (a, b), v in links.items():
        strength[a, b] = strength[b, a] = v
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), n_per_class)
    logits = rng.normal(0.0, 1.0, (labels.size, c)) + strength[labels]
    logits[np.arange(labels.size), labels] += bonus
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return labels, (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


# A hand-made predictions file (test_pairs, test_predictions): 4 pictures x 4 classes, each
# row's ranking unambiguous.
HAND_CLASSES = np.array(["a", "b", "c", "d"])
HAND_PROBS = np.array(
    [
        [0.70, 0.20, 0.06, 0.04],  # label a: top-1 right
        [0.10, 0.30, 0.50, 0.10],  # label b: c, b, a/d tie -> a (lower index) first
        [0.05, 0.15, 0.20, 0.60],  # label c: d, c, b
        [0.40, 0.35, 0.15, 0.10],  # label d: a, b, c (d not in top-3)
    ],
    dtype=np.float32,
)
HAND_LABELS = np.array([0, 1, 2, 3])


def hand_file(folder: Path, name: str = "pred.npz", **arrays) -> Path:
    """Save `arrays` as folder/name with np.savez; returns the path."""
    path = folder / name
    np.savez(path, **arrays)
    return path


def hand_arrays(**overrides) -> dict:
    """The hand-made file's arrays with `overrides`; a key given None is left out."""
    arrays = {"labels": HAND_LABELS, "classes": HAND_CLASSES, "probs": HAND_PROBS}
    arrays.update(overrides)
    return {k: v for k, v in arrays.items() if v is not None}


# Hand-made and synthetic pairs for the evaluation tests (test_evaluate, test_confusion,
# test_report).


def hand_pairs(true, guess, k, classes, groups=None, name="c0") -> Pairs:
    """One classifier's pairs, pictures without a split."""
    from confusion_embeddings.pairs import Pairs

    true, guess = np.asarray(true, np.int32), np.asarray(guess, np.int32)
    return Pairs(
        true=true,
        guess=guess,
        rank=np.tile(np.arange(1, k + 1, dtype=np.int8), len(true) // k),
        prob=np.full(len(true), np.nan, np.float32),
        split=np.full(len(true), -1, np.int8),
        classes=tuple(classes),
        splits=(),
        groups=groups,
        top_k=k,
        classifier=np.zeros(len(true), np.int16),
        classifiers=(name,),
    )


def split_pairs(tmp_path, seed: int, name: str, **kwargs) -> Pairs:
    """One classifier's top-3 pairs of a 10-class synthetic file with train/test splits."""
    from confusion_embeddings.pairs import build_pairs
    from confusion_embeddings.predictions import load_predictions

    path = tmp_path / f"{name}.npz"
    write_predictions(
        path, make_synthetic_predictions(200, CIFAR10, CIFAR10_GROUPS, 1.5, seed=seed, **kwargs)
    )
    return build_pairs(load_predictions(path), top_k=3, block_size=4096)


# 20 classes in 4 groups of 5, a classifier about 93% right on top-1 whose mistakes stay in
# the group: many class pairs, so the rank correlation is not at the mercy of a few.
SECONDARY_CLASSES = [f"s{i:02d}" for i in range(20)]
SECONDARY_GROUPS = {f"g{g}": SECONDARY_CLASSES[5 * g : 5 * g + 5] for g in range(4)}


def secondary_arrays(seed: int) -> dict[str, np.ndarray]:
    return make_synthetic_predictions(
        1500, SECONDARY_CLASSES, SECONDARY_GROUPS, confusion_strength=1.0, seed=seed, true_bonus=4.0
    )


def random_lower_guesses(arrays: dict, seed: int) -> dict[str, np.ndarray]:
    """The same top-1 guesses, the 2nd and 3rd drawn uniformly among the other wrong classes
    (a `topk` predictions file): lower-ranked guesses that carry no structure."""
    probs, labels = arrays["probs"], arrays["labels"]
    n, c = probs.shape
    top1 = probs.argmax(axis=1)
    keys = np.random.default_rng(seed).random((n, c))
    keys[np.arange(n), labels] = 2.0  # never the true class ...
    keys[np.arange(n), top1] = -1.0  # ... and the top-1 guess first
    out = {k: v for k, v in arrays.items() if k != "probs"}
    out["topk"] = np.argsort(keys, axis=1)[:, :3].astype(np.int16)
    return out


def pairs_of(tmp_path, arrays, name="pred") -> Pairs:
    """The top-3 pairs of `arrays` saved as tmp_path/<name>.npz."""
    from confusion_embeddings.pairs import build_pairs
    from confusion_embeddings.predictions import load_predictions

    path = write_predictions(tmp_path / f"{name}.npz", arrays)
    return build_pairs(load_predictions(path), top_k=3, block_size=65536)
