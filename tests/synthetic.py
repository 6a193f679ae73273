"""The tests' synthetic predictions: benchmarks/synthetic.py's generator (re-exported here,
so tests import every fixture from one place) and the small planted structures below.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

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
