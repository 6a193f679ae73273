"""Cross-fitting (`train.crossfit_folds` = K >= 2): the classifier of seed s leaves out the
class-balanced fold s mod K of the training pictures, and predicts only that fold of the
train split (plus the other splits whole); K classifiers together predict every training
picture exactly once, each by a model that never saw it.

confusion_embeddings/data/selection.py:crossfit_folds, cnn/config.py:RunConfig.holdout,
cnn/training.py:training_rows / training_split, cnn/inference.py:predict_splits, the train
and predict stages.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.config import Holdout
from confusion_embeddings.cnn.inference import predict_splits
from confusion_embeddings.cnn.training import training_rows, training_split
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.data.prepared import Split, load_prepared
from confusion_embeddings.data.selection import crossfit_folds
from confusion_embeddings.predictions import load_predictions
from stages import train as train_stage

from cnn_helpers import tiny_run
from helpers import (
    TINY_TRAIN,
    default_params,
    make_prepared,
    run_in_project,
    scratch_project,
    stage_argv,
    stage_options,
)


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Labels with counts[c] pictures of class c, in a shuffled order."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels).astype(np.int32)


# --------------------------------------------------------------------------- the folds


@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("counts", [[10, 10, 10], [7, 3, 12, 1], [100, 99, 2]])
def test_folds_are_class_balanced_and_partition_the_pictures(counts, folds):
    labels = _labels(counts)
    fold = crossfit_folds(labels, folds)
    assert fold.shape == labels.shape
    # A partition: every picture in exactly one fold 0 .. K-1.
    assert fold.min() >= 0 and fold.max() < folds
    assert sum(int((fold == f).sum()) for f in range(folds)) == len(labels)
    # Class-balanced: each class's pictures per fold differ by at most one.
    for c, n in enumerate(counts):
        per_fold = np.bincount(fold[labels == c], minlength=folds)
        assert per_fold.sum() == n
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


def test_folds_are_deterministic_and_not_in_picture_order():
    labels = _labels([40, 40, 40])
    fold = crossfit_folds(labels, 4)
    np.testing.assert_array_equal(crossfit_folds(labels.copy(), 4), fold)
    # Shuffled within each class (a fixed seed), not dealt out in file order.
    first = fold[labels == 0]
    assert not np.array_equal(first, np.arange(len(first)) % 4)


def test_every_classifier_sees_the_same_folds():
    """The folds depend on the labels only: the classifier of seed s leaves out fold s mod K
    of one common assignment, so seeds 0 .. K-1 leave out disjoint folds that cover all."""
    labels = _labels([9, 8, 7])
    k = 3
    holdouts = {s: tiny_run(seed=s, crossfit_folds=k).holdout for s in range(2 * k)}
    kept = {s: training_rows(labels, h) for s, h in holdouts.items()}
    left = {s: np.setdiff1d(np.arange(len(labels)), rows) for s, rows in kept.items()}
    for s in range(k):
        np.testing.assert_array_equal(kept[s], kept[s + k])  # seed s and s + K: one fold
    together = np.concatenate([left[s] for s in range(k)])
    np.testing.assert_array_equal(np.sort(together), np.arange(len(labels)))  # exactly once


def test_holdout_of_a_seed():
    assert tiny_run(seed=5, crossfit_folds=0).holdout is None
    assert [tiny_run(seed=s, crossfit_folds=3).holdout for s in (0, 1, 2, 3, 7)] == [
        Holdout(3, f) for f in (0, 1, 2, 0, 1)
    ]


def test_training_rows_leave_out_exactly_the_fold():
    labels = _labels([12, 11, 10])
    fold = crossfit_folds(labels, 3)
    np.testing.assert_array_equal(training_rows(labels, None), np.arange(len(labels)))
    for f in range(3):
        rows = training_rows(labels, Holdout(3, f))
        np.testing.assert_array_equal(rows, np.flatnonzero(fold != f))
    images = np.arange(len(labels) * 2, dtype=np.uint8).reshape(len(labels), 2, 1, 1)
    split = training_split(Split(images, labels), Holdout(3, 1))
    rows = np.flatnonzero(fold != 1)
    np.testing.assert_array_equal(split.labels, labels[rows])
    np.testing.assert_array_equal(split.images, images[rows])
    whole = Split(images, labels)
    assert training_split(whole, None) is whole


# --------------------------------------------------------------------------- the stages

K = 2
TINY = {**TINY_TRAIN, "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "crossfit_folds": K}


def crossfit_project(folder, **over):
    """A project (dvc.yaml, params.yaml with classifiers.seeds 0 .. K-1 and cross-fitting)
    holding a 4-class prepared dataset of 8 training and 4 test pictures per class."""
    params = default_params()
    params["classifiers"] = {"seeds": list(range(K))}
    params["train"].update({**TINY, **over})
    params["predict"].update({"batch_size": 8})
    scratch_project(folder, params)
    make_prepared(folder / stage_options("train", params)["--prepared"], train=8, test=4)
    return folder, params


def test_batch_size_counts_only_the_pictures_trained_on(tmp_path, monkeypatch, capsys):
    """32 training pictures, one fold of 16 left out: a batch of 24 does not fit."""
    project, params = crossfit_project(tmp_path, batch_size=24)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    monkeypatch.setattr("sys.argv", ["stages.train", *stage_argv("train@1", params)])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    assert "'train.batch_size' = 24 exceeds the 16 training pictures" in capsys.readouterr().err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


@pytest.fixture(scope="module")
def crossfit_run(tmp_path_factory):
    """train@s and predict@s for every seed s of the crossfit project, in this process."""
    project, params = crossfit_project(tmp_path_factory.mktemp("crossfit"))
    for s in params["classifiers"]["seeds"]:
        run_in_project(project, f"train@{s}")
        run_in_project(project, f"predict@{s}")
    return project, params


def test_a_crossfit_model_records_its_fold(crossfit_run):
    project, params = crossfit_run
    for s in params["classifiers"]["seeds"]:
        model = project / stage_options(f"train@{s}", params)["--model"]
        assert read_config(model).holdout == Holdout(K, s % K)


def test_predictions_cover_the_left_out_fold_and_the_test_split(crossfit_run):
    project, params = crossfit_run
    data = load_prepared(project / stage_options("predict", params)["--prepared"])
    train_labels = data.splits["train"].labels
    fold = crossfit_folds(train_labels, K)
    seen = np.zeros(len(train_labels), int)
    for s in params["classifiers"]["seeds"]:
        out = project / stage_options(f"predict@{s}", params)["--out"]
        pred = load_predictions(out)
        assert list(pred.splits) == ["train", "test"]
        with np.load(out, allow_pickle=False) as npz:
            labels, split, logits = npz["labels"], npz["split"], npz["logits"]
        rows = np.flatnonzero(fold == s % K)
        on_train = split == 0
        assert on_train.sum() == len(rows) == len(train_labels) // K
        np.testing.assert_array_equal(labels[on_train], train_labels[rows])
        np.testing.assert_array_equal(labels[~on_train], data.splits["test"].labels)
        # They are those pictures' scores: the same model, told it saw every picture,
        # gives the same scores on those rows of the whole train split.
        model = project / stage_options(f"train@{s}", params)["--model"]
        m = load_model(model)
        everything = replace(m, run=replace(m.run, train=replace(m.run.train, crossfit_folds=0)))
        known = list(range(len(data.classes)))
        full, summary = predict_splits(
            data, everything, known, ["train", "test"], 8, False, scores="logits"
        )
        assert summary["train"]["pictures"] == len(train_labels)
        whole = full["logits"]
        np.testing.assert_allclose(logits[on_train], whole[full["split"] == 0][rows], atol=1e-5)
        np.testing.assert_allclose(logits[~on_train], whole[full["split"] == 1], atol=1e-5)
        seen[rows] += 1
    # The K classifiers together: every training picture exactly once.
    np.testing.assert_array_equal(seen, 1)
