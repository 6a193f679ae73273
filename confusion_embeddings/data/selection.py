"""Which pictures a prepared dataset keeps, and the checks every source's classes pass;
which classes a classifier trains on (train.unseen leaves some out)."""

from __future__ import annotations

import zlib

import numpy as np

from confusion_embeddings.core.classes import unseen_problem
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.prepared import Prepared, Split

SPLITS = ("train", "test")


def subset(n: int, k: int | None, seed: int, split: str, cls: str) -> list[int]:
    """Indices (ascending) of a seeded random sample of min(n, k) out of n.

    The generator is keyed by split and class name, so adding or removing another class
    does not change which pictures this one keeps.
    """
    if k is None or n <= k:
        return list(range(n))
    rng = np.random.default_rng([seed, zlib.crc32(f"{split}/{cls}".encode())])
    return sorted(int(i) for i in rng.permutation(n)[:k])


def _check_class_name(where: str, name: str) -> None:
    """A class name must be usable as a word downstream: the predictions file and the
    word2vec text format refuse whitespace, and outputs are UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(
            f"{where}: class name {name!r} is not valid UTF-8 text; rename it"
        ) from None
    if not name or any(ch.isspace() for ch in name):
        fixed = "_".join(name.split()) or "a name"
        raise PipelineError(
            f"{where}: class name {name!r} is empty or contains whitespace, which the later "
            f"stages refuse (class names are words); rename it, e.g. to {fixed!r}"
        )


def check_classes(where: str, per_split: dict[str, dict[str, int]]) -> None:
    """Both splits must have the same classes, each non-empty, and at least two of them."""
    for cls in sorted(set(per_split["train"]) | set(per_split["test"])):
        _check_class_name(where, cls)
    for split in SPLITS:
        for cls, n in per_split[split].items():
            if n == 0:
                raise PipelineError(
                    f"{where}: {split}/{cls} is an empty class; add pictures or remove it"
                )
    train, test = set(per_split["train"]), set(per_split["test"])
    for cls in sorted(train ^ test):
        has, lacks = ("train", "test") if cls in train else ("test", "train")
        raise PipelineError(
            f"{where}: class '{cls}' has pictures in {has} but none in {lacks}; "
            f"add {lacks} pictures or remove the class"
        )
    if len(train) < 2:
        raise PipelineError(
            f"{where}: found {len(train)} class(es) {sorted(train)}; a classifier needs at "
            "least two"
        )


def crossfit_folds(labels: np.ndarray, folds: int) -> np.ndarray:
    """The cross-fitting fold (0 .. folds-1) of each picture, class-balanced: each class's
    pictures are shuffled with a fixed seed and dealt out in turn. The same for every
    classifier, so the classifiers that leave out different folds together cover every
    picture exactly once."""
    fold = np.empty(len(labels), np.int32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = np.random.default_rng([0, int(c)]).permutation(len(idx))
        fold[idx[order]] = np.arange(len(idx)) % folds
    return fold


def known_classes(classes: list[str], unseen: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of the classes a classifier trains on: every class but the `unseen` ones
    (params.yaml's train.unseen), which must pass core/classes.py's check."""
    problem = unseen_problem(classes, unseen)
    if problem:
        raise PipelineError(f"params.yaml: 'train.unseen' {problem}")
    return [i for i, name in enumerate(classes) if name not in unseen]


def without_classes(data: Prepared, unseen: tuple[str, ...]) -> Prepared:
    """The dataset a classifier trains on: the pictures of the `unseen` classes removed
    and the labels renumbered 0 .. C-k-1 over the known classes, in their order. With no
    unseen class, `data` itself (nothing is copied)."""
    if not unseen:
        return data
    known = known_classes(data.classes, unseen)
    new_label = np.full(len(data.classes), -1, np.int32)
    new_label[known] = np.arange(len(known), dtype=np.int32)
    splits = {}
    for name, split in data.splits.items():
        rows = np.flatnonzero(new_label[split.labels] >= 0)
        splits[name] = Split(np.asarray(split.images[rows]), new_label[split.labels[rows]])
    groups = None
    if data.groups is not None:
        groups = {g: [c for c in members if c not in unseen] for g, members in data.groups.items()}
    return Prepared([data.classes[i] for i in known], splits, groups)
