"""Tests of confusion_embeddings/evaluation/groups.py: the adjusted Rand index and the
groups evaluate reads (evaluate.groups or the predictions file's own)."""

from __future__ import annotations

import numpy as np
import pytest

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.evaluation.groups import adjusted_rand_index, resolve_groups

from synthetic import CIFAR10


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # label names do not matter
        ([0, 0, 1, 2], [0, 0, 1, 1], 4 / 7),  # sklearn's documented example: 0.57
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),  # worse than chance
    ],
)
def test_adjusted_rand_index_known_values(a, b, expected):
    assert adjusted_rand_index(np.array(a), np.array(b)) == pytest.approx(expected)


def test_unknown_class_in_groups_refused():
    with pytest.raises(
        PipelineError,
        match=r"evaluate\.groups'.*unknown class 'kat' \(did you mean 'cat'\?\); "
        r"valid classes: airplane",
    ):
        resolve_groups({"animals": ["cat", "kat"]}, None, tuple(CIFAR10))
    with pytest.raises(PipelineError, match="must be a list of class names"):
        resolve_groups({"animals": "cat"}, None, tuple(CIFAR10))
    assert resolve_groups(None, {"x": ["cat"]}, tuple(CIFAR10)) == {"x": ["cat"]}
